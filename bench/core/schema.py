"""Names shared by every layer that writes or reads a run's tables, defined once.

``scores.csv`` has one row per (model, stage, explainer, metric, image) with the columns
:data:`SCORE_COLUMNS`; ``curves.csv`` one row per curve point with :data:`CURVE_COLUMNS`;
``substrates.csv`` and ``substrate_curves.csv`` (the reliability card's substrate sensitivity)
have :data:`SUBSTRATE_COLUMNS` and :data:`SUBSTRATE_CURVE_COLUMNS`.
A stage is ``"pre"`` (the trained model), ``"post"`` (the tuned one) or ``"post:<variant>"`` (one
of several tuning policies, ``[tune.variants]``); an image's confusion cell
under a model is one of :data:`CELLS` for binary data, with class 1 (pneumonia) as the positive class,
and for K > 2 classes one of :func:`cell_names` (``c<k>_ok`` / ``c<k>_wrong``: an image of true class
k predicted right / wrong), ordered by class.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

STAGES = ("pre", "post")  # a run without tuning variants; with variants the post stages are "post:<variant>"
CELLS = ("TP", "FP", "FN", "TN")
_MULTI_CELL = re.compile(r"c(\d+)_(ok|wrong)")
SCORE_COLUMNS = (
    "model",
    "stage",
    "explainer",
    "metric",
    "image",
    "label",
    "pred",
    "cell",
    "value",
    "status",
    "message",
    "higher_is_better",
    "seconds_per_image",
    "peak_mem_mb",
)
CURVE_COLUMNS = ("model", "stage", "explainer", "curve", "image", "fraction", "prob")
# the reliability card's substrate sensitivity: scores per substrate, and curves averaged over images
SUBSTRATE_COLUMNS = (
    "model",
    "stage",
    "explainer",
    "metric",
    "substrate",
    "image",
    "value",
    "status",
    "higher_is_better",
)
SUBSTRATE_CURVE_COLUMNS = ("model", "stage", "explainer", "curve", "substrate", "fraction", "prob_mean", "n")
# map similarity between two maps of one image (pre vs post, seed vs seed, explainer seed vs seed)
# the sampling design of a per-cell sample: per architecture, the model that drew the images and every confusion
# cell's count in the test split under it (the strata of the test-split-weighted means)
SAMPLE_COLUMNS = ("arch", "model", "cell", "n_test", "n_sampled")
SIMILARITY_COLUMNS = ("model", "explainer", "comparison", "image", "cell_a", "cell_b", "spearman", "top_overlap")


def is_stage(stage: str) -> bool:
    """``"pre"``, ``"post"`` or ``"post:<variant>"`` (a tuning variant's stage)."""
    return stage in STAGES or (stage.startswith("post:") and len(stage) > len("post:"))


def stage_key(stage: str) -> tuple[int, str]:
    """Sort key of a stage: pre, post, then the variants by name."""
    return (0, "") if stage == "pre" else (1, "") if stage == "post" else (2, stage)


def cell_names(num_classes: int = 2) -> tuple[str, ...]:
    """Every confusion cell of a K-class task, in order: :data:`CELLS` for K <= 2, else
    ``c0_ok, c0_wrong, c1_ok, ...`` (per true class: predicted right, predicted wrong)."""
    if num_classes <= 2:
        return CELLS
    return tuple(f"c{k}_{v}" for k in range(num_classes) for v in ("ok", "wrong"))


def is_cell(name: object) -> bool:
    """A binary cell (:data:`CELLS`) or a multi-class one (``c<k>_ok`` / ``c<k>_wrong``)."""
    return isinstance(name, str) and (name in CELLS or _MULTI_CELL.fullmatch(name) is not None)


def cell_key(name: str) -> tuple[int, int, str]:
    """Sort key of a cell: binary cells in :data:`CELLS` order, then multi-class cells by class, ok
    first (anything else last, by name)."""
    if name in CELLS:
        return (0, CELLS.index(name), "")
    m = _MULTI_CELL.fullmatch(str(name))
    if m is None:
        return (2, 0, str(name))
    return (1, 2 * int(m.group(1)) + (m.group(2) == "wrong"), "")


def ordered_cells(present: Iterable[str]) -> tuple[str, ...]:
    """The cells a table or figure iterates over: all of :data:`CELLS` when every present cell is
    binary (so binary output never depends on which cells occur), else the present cells in
    :func:`cell_key` order."""
    present = set(present)
    if present <= set(CELLS):
        return CELLS
    return tuple(sorted(present, key=cell_key))


def move_cells(moves: Mapping[str, Any]) -> tuple[str, ...]:
    """The rows and columns of a cell-move table ``{from: {to: count}}``: every binary cell, or for
    K > 2 classes the cells some image moved from or to (a full 2K x 2K table would be mostly zeros)."""
    rows = {x: r for x, r in moves.items() if isinstance(r, Mapping)}
    used = {x for x, r in rows.items() if any(r.values())} | {y for r in rows.values() for y, v in r.items() if v}
    return ordered_cells(used or set(moves))


def confusion_cells(labels: Iterable[int], preds: Iterable[int], num_classes: int = 2) -> list[str]:
    """Per-image confusion cell.

    Binary (``num_classes <= 2``), class 1 positive: ``"TP"``, ``"FP"``, ``"FN"`` or ``"TN"``.
    K > 2 classes: ``"c<y>_ok"`` when the prediction equals the true class ``y``, else
    ``"c<y>_wrong"``. ``labels`` and ``preds`` are integer sequences of equal length (numpy
    arrays, lists, or tensors converted with ``.numpy()``).
    """
    if num_classes > 2:
        return [f"c{int(y)}_{'ok' if int(y) == int(p) else 'wrong'}" for y, p in zip(labels, preds)]
    return [("T" if int(y) == int(p) else "F") + ("P" if int(p) == 1 else "N") for y, p in zip(labels, preds)]
