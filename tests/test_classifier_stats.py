"""bench.stats.classifier: ROC AUC, the confusion matrix, McNemar's exact test, by hand and against
scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from bench.core.schema import confusion_cells
from bench.stats.classifier import classification_metrics, macro_auc, mcnemar_exact, roc_auc


def test_mcnemar_exact_matches_binomial_by_hand():
    labels = np.array([1] * 30)
    a = np.array([1] * 20 + [0] * 10)  # a right on the first 20
    b = np.array([1] * 12 + [0] * 8 + [1] * 10)  # b wrong on 12..19, right on 20..29
    r = mcnemar_exact(labels, a, b)
    assert (r["a_right_b_wrong"], r["a_wrong_b_right"]) == (8, 10)
    # two-sided exact binomial: 2 * P(X <= 8), X ~ Bin(18, 1/2)
    assert r["p_value"] == pytest.approx(min(1.0, 2 * stats.binom.cdf(8, 18, 0.5)))
    assert mcnemar_exact(labels, a, a)["p_value"] == 1.0


def test_auc_equals_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    s[:20] = 0.5  # ties count one half
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert roc_auc(y, s) == pytest.approx(pairwise)


def test_metrics_by_hand():
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(np.array([1, 1, 0, 0]), probs)
    assert m["confusion"] == [[1, 1], [1, 1]] and m["acc"] == 0.5
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5
    assert confusion_cells([1, 1, 0, 0], probs.argmax(1)) == ["TP", "FN", "FP", "TN"]


@pytest.mark.reference
def test_auc_matches_scikit_learn_binary_and_macro_one_vs_rest():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounded: ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    k = rng.integers(0, 4, 300)
    probs = rng.dirichlet(np.ones(4), 300) + np.eye(4)[k] * 0.3
    probs /= probs.sum(1, keepdims=True)
    assert macro_auc(k, probs) == pytest.approx(roc_auc_score(k, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))  # one class only: undefined
