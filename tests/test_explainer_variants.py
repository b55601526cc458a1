"""Explainer variants: ``base@label`` runs a registered explainer a second time with its own
``[explain.params]`` table, under its own name in every table, without registering anything."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.core.registry import Registry, split_variant
from bench.perf.floor import passes_per_image
from bench.report.leaderboard import read_scores
from bench.report.plots import load_attribution_examples
from bench.run import runner
from bench.run.config import load_config
from bench.run.unit import explainer_code_digest
from explainers import EXPLAINERS, explainer_params, get_explainer, register_explainer
from tests.conftest import bench_error

IG = "captum.integrated_gradients"


def _names(*names: str) -> str:
    return f"explain.names={json.dumps(list(names))}"


def _params(table: dict[str, dict[str, object]]) -> str:
    inner = ", ".join(
        f'"{n}" = {{{", ".join(f"{k} = {json.dumps(v)}" for k, v in p.items())}}}' for n, p in table.items()
    )
    return f"explain.params={{{inner}}}"


# --------------------------------------------------------------------------------------------
# the one resolving function and the registry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        (IG, (IG, None)),
        (f"{IG}@blur", (IG, "blur")),
        ("random@s2", ("random", "s2")),
        ("edge@0_a-b", ("edge", "0_a-b")),
    ],
)
def test_split_variant_parses_base_and_label(name, expected):
    assert split_variant("explainer", name) == expected


@pytest.mark.parametrize(
    "name, needle",
    [
        ("random@", "the label after '@' is empty"),
        ("random@a@b", "has more than one '@'"),
        ("random@Blur", "write e.g. 'random@blur'"),
        ("random@-x", "starting with a letter or a digit"),
        ("random@a.b", "must be lower-case letters, digits, _ and -"),
        ("@blur", "names no explainer before '@'"),
    ],
)
def test_malformed_variant_names_are_one_line_errors(name, needle):
    msg = bench_error(split_variant, "explainer", name)
    assert needle in msg and repr(name) in msg, msg
    assert bench_error(EXPLAINERS.get, name) == msg  # the registry says the same
    assert name not in EXPLAINERS


def test_a_variant_resolves_to_its_base_entry_and_is_not_registered():
    before = EXPLAINERS.names()
    assert EXPLAINERS.get(f"{IG}@blur") is EXPLAINERS.get(IG)
    assert get_explainer(f"{IG}@blur").name == IG and f"{IG}@blur" in EXPLAINERS
    assert explainer_params(f"{IG}@blur") == explainer_params(IG)
    assert explainer_code_digest(get_explainer(f"{IG}@blur").obj) == explainer_code_digest(get_explainer(IG).obj)
    # the cost floor reads the variant's own parameters through the base's pass rule
    assert passes_per_image(f"{IG}@blur", {"n_steps": 8}) == passes_per_image(IG, {"n_steps": 8})
    assert passes_per_image(f"{IG}@blur", {"n_steps": 8}) != passes_per_image(IG, {"n_steps": 16})
    assert EXPLAINERS.names() == before and f"{IG}@blur" not in before


def test_an_unknown_base_says_so_with_the_nearest_name():
    msg = bench_error(EXPLAINERS.get, "captum.integrated_gradientz@blur")
    assert msg.startswith(
        "unknown explainer 'captum.integrated_gradientz' in the variant 'captum.integrated_gradientz@blur'"
    ), msg
    assert f"did you mean {IG!r}?" in msg


def test_names_with_an_at_cannot_be_registered_where_variants_resolve():
    with pytest.raises(ValueError, match="marks a variant"):
        register_explainer("test.variant@x")(lambda model, inputs, targets, *, background: None)
    assert "test.variant@x" not in EXPLAINERS.names()
    # a registry without variants keeps '@' an ordinary character (the metrics, models, datasets)
    plain: Registry = Registry("thing")
    plain.register("a@b", print)
    assert plain.get("a@b").obj is print and "a" not in plain


# --------------------------------------------------------------------------------------------
# config validation
# --------------------------------------------------------------------------------------------


def test_the_config_accepts_a_variant_beside_its_base():
    cfg = load_config(None, [_names(IG, f"{IG}@blur", f"{IG}@bare"), _params({f"{IG}@blur": {"baseline": "blur"}})])
    assert cfg.explain.names == (IG, f"{IG}@blur", f"{IG}@bare")  # @bare: no params table, accepted
    assert dict(cfg.explain.params[f"{IG}@blur"]) == {"baseline": "blur"}
    cfg = load_config(None, ['reliability.controls=["random", "random@other"]'])  # a control may be a variant
    assert cfg.reliability.controls == ("random", "random@other")


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            [_names("captum.integrated_gradientz@blur")],
            "unknown explainer 'captum.integrated_gradientz' in the variant 'captum.integrated_gradientz@blur' "
            f"(did you mean {IG!r}?)",
        ),
        ([_names("random@")], "explainer variant 'random@': the label after '@' is empty"),
        ([_names("random@a@b")], "explainer variant 'random@a@b' has more than one '@'"),
        ([_names("random@Blur")], "explainer variant 'random@Blur': the label 'Blur' must be"),
        ([_names(f"{IG}@blur", f"{IG}@blur")], "explain.names: lists a name twice"),
        (
            [_names("random@x"), _params({"random@x": {"baseline": "blur"}})],
            "explain.params.\"random@x\": explainer 'random' has no parameter 'baseline'",
        ),
        (
            [_names(f"{IG}@blur"), _params({f"{IG}@blur": {"baseline": "blurr"}})],
            f"explain.params.\"{IG}@blur\".baseline = 'blurr' is not one of",
        ),
        ([_names(f"{IG}@blur"), _params({f"{IG}@blur": {"n_steps": 0}})], f'explain.params."{IG}@blur".n_steps = 0'),
        ([_params({"random@Bad": {}})], "explainer variant 'random@Bad'"),  # a params table's name is checked too
        (['reliability.controls=["random@"]'], "config value reliability.controls: explainer variant 'random@'"),
    ],
)
def test_the_config_refuses_bad_variants_in_one_line(overrides, needle):
    msg = bench_error(load_config, None, overrides)
    assert needle in msg, msg


# --------------------------------------------------------------------------------------------
# a run: both names in every row, their own attributions
# --------------------------------------------------------------------------------------------

CHEAP = [
    'data.dataset="synthetic"',
    "data.options.n=40",
    "data.per_cell=2",
    "data.background_size=4",
    'models.names=["tiny"]',
    'models.stages=["pre"]',
    "train.epochs=1",
    "train.batch_size=32",
    "explain.shard_size=4",
    'metrics.names=["deletion_auc"]',
    'metrics.params={"deletion_auc" = {steps = 4}}',
    'device="cpu"',
    "reliability.bootstrap=100",
    "reliability.substrates=[]",
    "reliability.imputation=false",
]
RUN = [IG, f"{IG}@blur", f"{IG}@same", "random"]


@pytest.fixture(scope="module")
def variant_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("variants")
    cfg = load_config(
        None,
        [
            f'results_dir="{results}"',
            'name="variants"',
            *CHEAP,
            _names(*RUN),
            _params(
                {IG: {"n_steps": 8}, f"{IG}@blur": {"n_steps": 8, "baseline": "blur"}, f"{IG}@same": {"n_steps": 8}}
            ),
        ],
    )
    return runner.run(cfg, progress=False)


def test_a_run_keeps_each_variant_under_its_own_name(variant_run):
    scores = read_scores(variant_run / "scores.csv")
    assert set(scores.explainer) == set(RUN)
    assert (scores.status == "ok").all()
    wide = scores.pivot_table(index="image", columns="explainer", values="value")
    assert len(wide) >= 2 and wide.notna().all().all()
    # another baseline, other scores; the base's own parameters, the base's scores exactly
    assert not np.allclose(wide[IG], wide[f"{IG}@blur"])
    np.testing.assert_array_equal(wide[IG].to_numpy(), wide[f"{IG}@same"].to_numpy())
    # and the maps themselves
    maps = load_attribution_examples(variant_run / "attributions.npz").models["tiny"].maps
    base, blur, same = maps[("pre", IG)], maps[("pre", f"{IG}@blur")], maps[("pre", f"{IG}@same")]
    assert np.abs(base - blur).max() > 1e-3 * np.abs(base).max()
    np.testing.assert_array_equal(base, same)
    # the manifest records the variant's parameters under its name; the unit log holds every name
    manifest = json.loads((variant_run / "manifest.json").read_text())
    assert manifest["config"]["explain"]["params"][f"{IG}@blur"] == {"n_steps": 8, "baseline": "blur"}
    assert set(manifest["cost"]["by_explainer"]) == set(RUN)
    assert manifest["cost"]["by_explainer"][f"{IG}@blur"]["floor_seconds"] > 0


def test_a_variant_has_its_own_cache_entries(variant_run):
    """Every name is its own unit: the cache key holds the name and the given parameters, so even
    the variant with the base's parameters is computed (and stored) on its own."""
    scores = read_scores(variant_run / "scores.csv")
    shards = -(-scores.image.nunique() // 4)  # explain.shard_size = 4
    assert len(list((variant_run / "cache" / "attributions").glob("*.pt"))) == len(RUN) * shards


def test_identical_maps_are_one_method_in_the_tables(variant_run):
    """The alias detection counts the variant with the base's parameters once, the blurred one on its own."""
    board = (variant_run / "leaderboard.md").read_text()
    assert f"{IG} (= {IG}@same)" in board, board
    assert f"{IG}@blur" in board
