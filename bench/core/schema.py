"""Names shared by every layer that writes or reads a run's tables, defined once.

``scores.csv`` has one row per (model, stage, explainer, metric, image) with the columns
:data:`SCORE_COLUMNS`; ``curves.csv`` one row per curve point with :data:`CURVE_COLUMNS`;
``substrates.csv`` and ``substrate_curves.csv`` (the reliability card's substrate sensitivity)
have :data:`SUBSTRATE_COLUMNS` and :data:`SUBSTRATE_CURVE_COLUMNS`.
A stage is ``"pre"`` (the trained model), ``"post"`` (the tuned one) or ``"post:<variant>"`` (one
of several tuning policies, ``[tune.variants]``); an image's confusion cell
under a model is one of :data:`CELLS`, with class 1 (pneumonia) as the positive class.
"""
from __future__ import annotations

from typing import Sequence

STAGES = ("pre", "post")  # a run without tuning variants; with variants the post stages are "post:<variant>"
CELLS = ("TP", "FP", "FN", "TN")
SCORE_COLUMNS = ("model", "stage", "explainer", "metric", "image", "label", "pred", "cell", "value", "status",
                 "message", "higher_is_better", "seconds_per_image", "peak_mem_mb")
CURVE_COLUMNS = ("model", "stage", "explainer", "curve", "image", "fraction", "prob")
# the reliability card's substrate sensitivity: scores per substrate, and curves averaged over images
SUBSTRATE_COLUMNS = ("model", "stage", "explainer", "metric", "substrate", "image", "value", "status",
                     "higher_is_better")
SUBSTRATE_CURVE_COLUMNS = ("model", "stage", "explainer", "curve", "substrate", "fraction", "prob_mean", "n")
# map similarity between two maps of one image (pre vs post, seed vs seed, explainer seed vs seed)
SIMILARITY_COLUMNS = ("model", "explainer", "comparison", "image", "cell_a", "cell_b", "spearman", "top_overlap")


def is_stage(stage: str) -> bool:
    """``"pre"``, ``"post"`` or ``"post:<variant>"`` (a tuning variant's stage)."""
    return stage in STAGES or (stage.startswith("post:") and len(stage) > len("post:"))


def stage_key(stage: str) -> tuple[int, str]:
    """Sort key of a stage: pre, post, then the variants by name."""
    return (0, "") if stage == "pre" else (1, "") if stage == "post" else (2, stage)


def confusion_cells(labels: Sequence[int], preds: Sequence[int]) -> list[str]:
    """Per-image confusion cell with class 1 as positive: ``"TP"``, ``"FP"``, ``"FN"`` or ``"TN"``.

    ``labels`` and ``preds`` are integer sequences of equal length (numpy arrays, lists, or
    tensors converted with ``.numpy()``).
    """
    return [("T" if int(y) == int(p) else "F") + ("P" if int(p) == 1 else "N") for y, p in zip(labels, preds)]
