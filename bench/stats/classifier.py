"""Classifier statistics: ROC AUC, accuracy and the confusion matrix, McNemar's exact test, and the
comparison of two classifiers on the same images (a tuned model against its parent).

Pure functions of labels, scores and predictions (numpy in, plain Python numbers out): the
training loop (:mod:`models.training`) and the runner's model comparisons call them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from bench.core.schema import cell_names, confusion_cells


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic: AUC = U / (n_pos * n_neg)."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = np.asarray(scores)[labels], np.asarray(scores)[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (len(pos) * len(neg)))


def macro_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro one-vs-rest AUC of a K-class task: the mean over classes k of
    :func:`roc_auc` (class k vs the rest, scored by ``probs[:, k]``), over the classes that occur
    and do not make up every label (MedMNIST's multi-class AUC; sklearn's ``multi_class="ovr"``,
    ``average="macro"``). NaN when no class qualifies."""
    labels = np.asarray(labels).astype(int)
    aucs = [roc_auc(labels == k, probs[:, k]) for k in range(probs.shape[1]) if 0 < (labels == k).sum() < len(labels)]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """ACC, AUC, sensitivity, specificity and the confusion matrix for a binary task.

    ``probs (N, 2)``; the prediction is the argmax (MedMNIST's 0.5 threshold). Positive = class 1.
    Confusion matrix rows are true labels, columns predictions: ``[[TN, FP], [FN, TP]]``.
    ``probs (N, K)`` with K > 2: ACC, macro one-vs-rest AUC (:func:`macro_auc`), ``recall`` per
    class (NaN, written as null, for a class without images) and the K x K confusion matrix.
    """
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(1)
    if probs.ndim == 2 and probs.shape[1] > 2:
        k = probs.shape[1]
        confusion = np.zeros((k, k), dtype=int)
        np.add.at(confusion, (labels, preds), 1)
        support = confusion.sum(1)
        return {
            "acc": float((preds == labels).mean()) if len(labels) else 0.0,
            "auc": macro_auc(labels, probs),
            "recall": [float(confusion[c, c] / support[c]) if support[c] else None for c in range(k)],
            "confusion": confusion.tolist(),
            "n": int(len(labels)),
        }
    tp = int(((preds == 1) & (labels == 1)).sum())
    tn = int(((preds == 0) & (labels == 0)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    return {
        "acc": (tp + tn) / max(1, len(labels)),
        "auc": roc_auc(labels, probs[:, 1]),
        "sensitivity": tp / max(1, tp + fn),
        "specificity": tn / max(1, tn + fp),
        "confusion": [[tn, fp], [fn, tp]],
        "n": int(len(labels)),
    }


def mcnemar_exact(labels: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test of two classifiers on the same images.

    b = images A gets right and B wrong, c = the reverse; under H0 b ~ Binomial(b + c, 1/2);
    two-sided exact p-value from ``scipy.stats.binomtest`` (McNemar 1947; exact form per
    Fagerland et al. 2013). p = 1 when b + c = 0.
    """
    labels, a, b_ = (np.asarray(v).astype(int) for v in (labels, preds_a, preds_b))
    ok_a, ok_b = a == labels, b_ == labels
    b = int((ok_a & ~ok_b).sum())
    c = int((~ok_a & ok_b).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"a_right_b_wrong": b, "a_wrong_b_right": c, "p_value": p}


def compare_classifiers(
    labels: np.ndarray,
    test_a: dict[str, Any],
    test_b: dict[str, Any],
    preds_a: np.ndarray,
    preds_b: np.ndarray,
    num_classes: int = 2,
) -> dict[str, Any]:
    """Two classifiers on the same test images: their metrics and deltas (b - a), McNemar's exact
    test and how many images moved between confusion cells (``test_pre`` is a, ``test_post`` b;
    the cells of :func:`bench.core.schema.cell_names` for ``num_classes``)."""
    cells = cell_names(num_classes)
    moves: dict[str, dict[str, int]] = {a: {b: 0 for b in cells} for a in cells}
    for a, b in zip(confusion_cells(labels, preds_a, num_classes), confusion_cells(labels, preds_b, num_classes)):
        moves[a][b] += 1
    scalar = ("acc", "auc", "sensitivity", "specificity", "loss")
    return {
        "test_pre": {k: test_a[k] for k in scalar if k in test_a},
        "test_post": {k: test_b[k] for k in scalar if k in test_b},
        "delta": {k: test_b[k] - test_a[k] for k in scalar if k in test_a and k in test_b},
        "mcnemar": mcnemar_exact(labels, preds_a, preds_b),
        "cell_moves": moves,
        "images_changed_cell": int(sum(moves[a][b] for a in cells for b in cells if a != b)),
    }
