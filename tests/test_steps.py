"""bench.perf.steps: score error by step count against a reference (fast: a tiny model, small images)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from bench.metrics.road import ROAD_PERCENTAGES
from bench.perf import steps as S
from explainers.base import Attribution
from tests.conftest import calibrated


def test_step_counts_of_the_defaults():
    assert S.road_percentages(9) == ROAD_PERCENTAGES  # k = 9 of the family is ROAD's shipped default
    assert S.default_steps("road_morf") == S.default_steps("road_lerf") == 9
    assert S.default_steps("deletion_auc") == S.default_steps("insertion_auc") == 49
    assert S.step_params("deletion_auc", 12) == {"steps": 12}
    assert S.step_params("road_lerf", 3) == {"percentages": (0.25, 0.5, 0.75)}


def test_error_is_zero_at_the_reference():
    from models.tiny import tiny

    model = calibrated(tiny(image_size=12), size=12)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 12, 12, generator=g)
    t = model(x).argmax(1)
    attrs = {
        "a": Attribution(torch.randn(2, 1, 12, 12, generator=g)),
        "b": Attribution(torch.randn(2, 1, 12, 12, generator=g)),
    }
    rows = S.step_rows(model, x, t, attrs, grid=(4, 8), reference=16)
    assert set(rows["metric"]) == set(S.DEFAULT_METRICS)
    assert set(rows.loc[rows["metric"] == "deletion_auc", "substrate"]) == {"zero", "blur"}
    assert set(rows.loc[rows["metric"] == "road_morf", "substrate"]) == {"-"}
    road = sorted(set(rows.loc[rows["metric"] == "road_morf", "steps"]))
    assert road == [4, 8, 9, 16]  # ROAD's default added to the grid; 49 steps are above this reference
    at_ref = rows[rows["steps"] == rows["reference"]]
    assert len(at_ref) == 6 * 3  # 6 (metric, substrate) x (2 explainers + the summary)
    assert (at_ref[["max_abs_err", "mean_abs_err", "mean_err", "max_pair_shift"]] == 0).all().all()
    below = rows[rows["steps"] < rows["reference"]]
    assert (below["max_abs_err"] > 0).any()  # the comparison reads different scores below it
    summary = rows[rows["explainer"] == S.SUMMARY]
    below_summary = summary[summary["steps"] < summary["reference"]]
    assert (below_summary["worst_pair"][below_summary["max_pair_shift"] > 0] == "a vs b").all()
    assert summary.loc[summary["steps"] == summary["reference"], "worst_pair"].isna().all()  # no worst of zeros
    d = summary[summary["metric"] == "deletion_auc"].set_index(["substrate", "steps"])
    assert d.loc[("zero", 8), "passes_f"] == 9 and d.loc[("zero", 8), "passes_fb"] == 0
    r = summary[summary["metric"] == "road_lerf"].set_index("steps")
    assert r.loc[9, "passes_f"] == 9


class ProbabilityLinear(nn.Module):
    """Logits ``(log q, log(1 - q))`` of ``q = w . x``: the softmax's class-0 probability is ``q`` itself."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = (x.flatten(1) * self.w).sum(1).clamp(1e-15, 1 - 1e-15)
        return torch.stack([q.log(), (1 - q).log()], 1)


def test_deletion_error_is_the_trapezoid_rules():
    """Pixel ``j`` of ``N`` weighs ``w_j = (2 (N - j) - 1) / N^2`` on an image of ones, zero substrate:
    deleting the ``n`` pixels of largest ``w`` first leaves ``q = (1 - n/N)^2``, deleting the smallest
    first leaves ``1 - (n/N)^2``. For a quadratic ``f = a x^2 + ...`` the trapezoid rule with ``k``
    equal intervals over [0, 1] errs by exactly ``a / (6 k^2)`` (Euler-Maclaurin: ``h^2/12 (f'(1) -
    f'(0))``, no higher terms). With ``k`` dividing ``N = 256`` every boundary is exact, so against the
    reference at 256 steps the error is ``a (1/k^2 - 1/256^2) / 6``: ``a = +1`` for the best order,
    ``a = -1`` for the worst; their paired mean difference moves by twice that."""
    n = 256
    j = torch.arange(n, dtype=torch.float64)
    w = (2 * (n - j) - 1) / n**2
    model = ProbabilityLinear(w).eval()
    x = torch.ones(1, 1, 16, 16, dtype=torch.float64)
    t = torch.zeros(1, dtype=torch.long)
    attrs = {"best": Attribution(w.view(1, 1, 16, 16).clone()), "worst": Attribution(-w.view(1, 1, 16, 16))}
    grid = (4, 8, 16, 32, 64, 128)
    rows = S.step_rows(model, x, t, attrs, metrics=("deletion_auc",), substrates=("zero",), grid=grid, reference=n)
    rows = rows.set_index(["explainer", "steps"])
    for k in grid:
        err = (1 / k**2 - 1 / n**2) / 6
        assert rows.loc[("best", k), "mean_err"] == pytest.approx(err, abs=1e-12)
        assert rows.loc[("worst", k), "mean_err"] == pytest.approx(-err, abs=1e-12)
        assert rows.loc[("best", k), "max_abs_err"] == pytest.approx(err, abs=1e-12)
        assert rows.loc[(S.SUMMARY, k), "max_pair_shift"] == pytest.approx(2 * err, abs=1e-12)
    # the scores themselves: 1/3 + 1/(6 k^2) (best) at the reference
    scores = S.step_scores(model, x, t, attrs, metrics=("deletion_auc",), substrates=("zero",), grid=(4,), reference=n)
    best = scores[(scores["explainer"] == "best")].set_index("steps")["value"]
    assert best[4] == pytest.approx(1 / 3 + 1 / 96, abs=1e-12)
    assert best[n] == pytest.approx(1 / 3 + 1 / (6 * n**2), abs=1e-12)


def _summary(shifts, steps=(4, 8, 16, 32), metric="deletion_auc", substrate="zero", default=8, reference=256):
    rows = [
        {
            "metric": metric,
            "substrate": substrate,
            "steps": k,
            "reference": reference,
            "explainer": S.SUMMARY,
            "max_pair_shift": s,
            "default_steps": default,
            "max_abs_err": 2 * s,
            "mean_abs_err": s,
            "mean_err": s,
            "worst_pair": "a vs b",
            "passes_fb": 0.0,
            "passes_f": k + 1.0,
            "images": 4,
            "explainers": 2,
            "s_per_image": 0.1,
            "precision": "float32",
        }
        for k, s in zip(steps, shifts)
    ]
    rows.append(
        {
            **rows[-1],
            "steps": reference,
            "max_pair_shift": 0.0,
            "max_abs_err": 0.0,
            "mean_abs_err": 0.0,
            "mean_err": 0.0,
            "passes_f": reference + 1.0,
        }
    )
    return rows


def test_choose_steps_picks_the_smallest_qualifying_count():
    mde = {"deletion_auc": 0.01}  # threshold 0.001
    c = S.choose_steps(_summary([0.01, 0.0009, 0.0002, 0.0001]), mde)[("deletion_auc", "zero")]
    assert c["threshold"] == pytest.approx(0.001)
    assert c["chosen"] == 8 and c["smallest_qualifying"] == 8 and c["default_qualifies"] is True
    assert c["chosen_shift"] == pytest.approx(0.0009)
    c = S.choose_steps(_summary([0.01, 0.005, 0.0002, 0.0001]), mde)[("deletion_auc", "zero")]
    assert c["chosen"] == 16 and c["default_qualifies"] is False
    # a lucky dip is not chosen: 4 qualifies, 8 does not
    c = S.choose_steps(_summary([0.0005, 0.002, 0.0002, 0.0001]), mde)[("deletion_auc", "zero")]
    assert c["smallest_qualifying"] == 4 and c["chosen"] == 16 and "larger count does not" in c["note"]
    # none qualifies: reported, not a crash
    c = S.choose_steps(_summary([0.05, 0.04, 0.03, 0.02]), mde)[("deletion_auc", "zero")]
    assert c["chosen"] is None and c["smallest_qualifying"] is None and c["note"].startswith("none qualifies")
    assert "none qualifies" in S.steps_tables(_summary([0.05, 0.04, 0.03, 0.02]), mde)
    # a metric without an mde gets no choice
    c = S.choose_steps(_summary([0.0, 0.0, 0.0, 0.0]), {})[("deletion_auc", "zero")]
    assert c["chosen"] is None and c["threshold"] is None and "no smallest detectable" in c["note"]


def _planted() -> pd.DataFrame:
    """Three explainers on 4 images; at 8 steps their scores move by planted per-image amounts."""
    ref = {"a": [0.1, 0.2, 0.3, 0.4], "b": [0.5, 0.5, 0.6, 0.6], "c": [0.2, 0.1, 0.2, 0.1]}
    move = {
        "a": [0.5, 0.1, 0.5, 0.1],  # mean +0.3, max 0.5
        "b": [0.0, -0.2, 0.0, -0.2],  # mean -0.1
        "c": [0.25] * 4,  # mean +0.25
    }
    rows = []
    for k, is_ref in ((8, False), (256, True)):
        for e, values in ref.items():
            for i, v in enumerate(values):
                rows.append(
                    {
                        "metric": "deletion_auc",
                        "substrate": "zero",
                        "steps": k,
                        "is_reference": is_ref,
                        "reference": 256,
                        "explainer": e,
                        "image": i,
                        "seconds": 1.0,
                        "value": v + (0.0 if is_ref else move[e][i]),
                    }
                )
    return pd.DataFrame(rows)


def test_paired_mean_change_is_over_pairs():
    rows = S.error_rows(_planted()).set_index(["explainer", "steps"])
    s = rows.loc[(S.SUMMARY, 8)]
    # pairs: a-b 0.3 - (-0.1) = 0.4, a-c 0.05, b-c 0.35; not the largest per-explainer mean change
    # (0.3) nor the largest per-image error (0.5)
    assert s["max_pair_shift"] == pytest.approx(0.4)
    assert s["worst_pair"] == "a vs b"
    assert s["max_abs_err"] == pytest.approx(0.5)
    assert rows.loc[("c", 8), "max_pair_shift"] == pytest.approx(0.35)  # c's pairs: b-c
    assert rows.loc[("b", 8), "mean_err"] == pytest.approx(-0.1)
    assert rows.loc[("b", 8), "mean_abs_err"] == pytest.approx(0.1)
    assert rows.loc[(S.SUMMARY, 256), "max_pair_shift"] == 0.0
    assert s["passes_f"] == 9 and s["default_steps"] == 49


def test_render_a_saved_run(tmp_path, capsys):
    rows = S.error_rows(_planted())
    run = {"benchmarks": [{"extra_info": {"kind": S.KIND, "rows": S.records(rows), "mde": {"deletion_auc": 1.0}}}]}
    path = tmp_path / "0001_steps.json"
    path.write_text(json.dumps(run))
    assert S.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| deletion_auc | zero | 1 | 0.1 | 49 |" in out
    assert "a vs b" in out and "8" in out
    # no qualifying count on this grid: 8 shifts by 0.4 > 0.1
    assert "none qualifies" in out
    assert "nan" not in out  # the reference row's missing worst pair, read back from JSON, is blank
    assert all(v is None or not (isinstance(v, float) and math.isnan(v)) for r in S.records(rows) for v in r.values())
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"benchmarks": []}))
    assert S.main([str(bad)]) == 2
    assert np.isfinite(rows["max_abs_err"]).all()
