"""Hostile input: nothing written outside the results folder, every bad value a one-line error before
any work, a damaged cache never blocks a run, one run per directory, failures retried, bad data
refused, strict JSON, messages that are whole and apply.

Runs use the synthetic data set and the tiny model with the cheapest explainers and metric.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.core.errors import BenchError, one_line
from bench.core.io import atomic_write_json
from bench.report.leaderboard import read_scores
from bench.run import cache, runner
from bench.run.config import load_config
from explainers import EXPLAINERS, Attribution, register_explainer
from models.checkpoints import default_checkpoint_path, load_checkpoint, read_sidecar, sidecar_path
from models.recipes import TrainConfig, TuneConfig
from models.tuning import tune_model

CHEAP = [
    'data.dataset="synthetic"',
    "data.options.n=40",
    "data.per_cell=2",
    "data.background_size=4",
    'models.names=["tiny"]',
    'models.stages=["pre"]',
    "train.epochs=1",
    "train.batch_size=32",
    'explain.names=["random", "edge"]',
    "explain.shard_size=4",
    'metrics.names=["deletion_auc"]',
    'metrics.params={"deletion_auc" = {steps = 4}}',
    'device="cpu"',
    "figures.enabled=false",
    "reliability.bootstrap=100",
]


def _cfg(results: Path, name: str = "h", *extra: str):
    return load_config(None, [f'name="{name}"', f'results_dir="{results}"', *CHEAP, *extra])


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _strict_json(path: Path) -> object:
    def refuse(token: str):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished cheap run: its results folder and config overrides."""
    results = tmp_path_factory.mktemp("res")
    run_dir = runner.run(_cfg(results), progress=False)
    return results, run_dir


# ----------------------------------------------------------------------------- paths and names


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../escape", ".hidden", "x\\y"])
def test_hostile_run_names_are_refused_and_write_nothing(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "res"
    line = _one_line_error(
        capsys, ["run", "--results", str(results), "--name", name, *sum((["--set", o] for o in CHEAP), [])]
    )
    assert "name" in line and "plain folder name" in line
    assert _tree(tmp_path) == set()  # not even the results folder


def test_a_run_named_like_the_checkpoint_folder_is_refused(tmp_path):
    with pytest.raises(BenchError, match="overlap"):
        runner.run(_cfg(tmp_path / "res", "checkpoints"), progress=False)
    assert not (tmp_path / "res" / "checkpoints" / "manifest.json").exists()


def test_checkpoints_follow_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "elsewhere"
    runner.run(_cfg(results), progress=False)
    assert not (tmp_path / "results").exists()  # nothing under the working directory's results/
    assert list((results / "checkpoints").glob("tiny-*.pt"))
    assert {p.parts[0] for p in (Path(p) for p in _tree(results))} == {"checkpoints", "h"}


def test_the_same_run_through_a_relative_and_an_absolute_path(finished, monkeypatch, capsys):
    results, run_dir = finished
    monkeypatch.chdir(results.parent)
    again = runner.run(_cfg(Path(results.name)), progress=False)  # relative spelling
    assert again.resolve() == run_dir.resolve()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["units"]["from_cache"] == manifest["units"]["total"]


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "override, needle",
    [
        ('explain.params={"random" = {seed = "3"}}', "explain.params.random.seed = '3' must be an integer"),
        ('metrics.params={"drop_rate" = {frac = 2.0}}', "metrics.params.drop_rate.frac = 2.0 must be in (0, 1]"),
        ('metrics.params={"deletion_auc" = {steps = 0}}', "metrics.params.deletion_auc.steps = 0 must be >= 1"),
        (
            'metrics.params={"randomisation_similarity" = {steps = -1}}',
            "metrics.params.randomisation_similarity.steps = -1 must be >= 0",
        ),
        ('metrics.params={"deletion_auc" = {substrate = "black"}}', "is not one of 'zero', 'mean', 'blur'"),
        (
            'metrics.params={"road_morf" = {percentages = [0.5, 0.2]}}',
            "must be a non-empty list of increasing fractions",
        ),
        ('metrics.params={"deletion_auc" = {context = 1}}', "has no parameter 'context'"),
        ('explain.params={"shap.deep" = {engine = "fast"}}', "engine = 'fast' is not one of 'auto', 'shap', 'batched'"),
        ('explain.params={"captum.integrated_gradients" = {n_steps = 5.5}}', "n_steps = 5.5 must be an integer"),
        ("data.per_cell=true", "data.per_cell: must be an integer >= 1, got True"),
        ("data.options.size=30", "data.options.size = 30 is not one of 28, 64, 128, 224"),
        ("data.options.sise=28", "dataset 'pneumoniamnist' has no option 'sise'"),
        ("seed=1.5", "seed: must be an integer"),
        ("figures.enabled=1", "figures.enabled: must be true or false"),
        ('report.self_contained="no"', "report.self_contained: must be true or false"),
        ("train.epochs=0", "config value train: epochs must be >= 1"),
        ('train.lr="fast"', "train.lr: 'fast' must be a number"),
        ('train.model="resnet18"', "remove train.model"),
        ("tune.unfreeze=[]", "unfreeze must name at least one module"),
        ('models.stages=["post"]', 'must be ["pre"] or ["pre", "post"]'),
    ],
)
def test_bad_values_are_refused_at_config_time(override, needle):
    with pytest.raises(BenchError) as exc:
        load_config(None, [override])
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_set_parses_toml_strictly(capsys):
    with pytest.raises(BenchError, match=r"'fast' is not a TOML value .*strings need quotes"):
        load_config(None, ["explain.output=fast"])
    with pytest.raises(BenchError, match="is not a TOML value"):
        load_config(None, ["data.per_cell=[1,"])
    with pytest.raises(BenchError, match="is not KEY=VALUE"):
        load_config(None, ["data.per_cell"])
    with pytest.raises(BenchError, match="is not a TOML key"):
        load_config(None, ["explain.params.shap..deep=1"])
    line = _one_line_error(capsys, ["run", "--set", "name=bare"])
    assert "'bare' is not a TOML value" in line


def test_set_reaches_names_with_dots():
    cfg = load_config(
        None,
        ['explain.params."shap.partition".max_evals=100', "explain.params.'captum.integrated_gradients'.n_steps=8"],
    )
    assert cfg.explain.params == {"shap.partition": {"max_evals": 100}, "captum.integrated_gradients": {"n_steps": 8}}
    with pytest.raises(BenchError, match=r'explain.params."shap.partition".max_evals = 0 must be >= 1'):
        load_config(None, ['explain.params."shap.partition".max_evals=0'])


def test_list_shows_only_real_parameters(capsys):
    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "context" not in out and "params: steps=49" in out


def test_a_bad_value_given_directly_is_refused_too():
    from bench.metrics import compute_metric

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(BenchError, match="frac = 2.0 must be in"):
        compute_metric("drop_rate", model, x, torch.tensor([0, 1]), Attribution(x), frac=2.0)


# ----------------------------------------------------------------------------- damaged state


def _copy_run(finished, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    results, run_dir = finished
    shutil.copytree(results, tmp_path / "res")
    return tmp_path / "res", tmp_path / "res" / run_dir.name


def _edit_attr(path: Path, with_checksum: bool, **changes) -> None:
    record = {**torch.load(path, weights_only=True), **changes}
    if with_checksum:  # a record that is internally consistent but does not fit the unit
        record["checksum"] = cache._attr_checksum(record)
    torch.save(record, path)


def _edit_scores(path: Path, with_checksum: bool, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    if with_checksum:
        record["checksum"] = cache._json_checksum({k: v for k, v in record.items() if k != "checksum"})
    path.write_text(json.dumps(record))


def _bump(record):
    name = next(iter(record["metrics"]))
    record["metrics"][name][0] = (record["metrics"][name][0] or 0.0) + 0.5


DAMAGE = {  # (cache folder, damage)
    "attribution: binary garbage": ("attributions", lambda p: p.write_bytes(os.urandom(300))),
    "attribution: another structure": ("attributions", lambda p: torch.save({"values": torch.zeros(3)}, p)),
    "attribution: wrong shape, valid checksum": (
        "attributions",
        lambda p: _edit_attr(p, True, values=torch.zeros(1, 1, 5, 5)),
    ),
    "attribution: changed value": (
        "attributions",
        lambda p: _edit_attr(p, False, values=torch.load(p, weights_only=True)["values"] + 1e-3),
    ),
    "scores: binary garbage": ("scores", lambda p: p.write_bytes(b"\x00\xff" * 40)),
    "scores: JSON of another shape": ("scores", lambda p: p.write_text('{"metrics": [1, 2]}')),
    "scores: changed value": ("scores", lambda p: _edit_scores(p, False, _bump)),
    "scores: a value short, valid checksum": (
        "scores",
        lambda p: _edit_scores(p, True, lambda r: r["metrics"][next(iter(r["metrics"]))].pop()),
    ),
    "scores: other metrics, valid checksum": (
        "scores",
        lambda p: _edit_scores(p, True, lambda r: r["metrics"].update(extra=r["metrics"][next(iter(r["metrics"]))])),
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_cache_entry_is_reported_and_recomputed(finished, tmp_path, capsys, kind):
    results, run_dir = _copy_run(finished, tmp_path)
    folder, damage = DAMAGE[kind]
    entry = sorted((run_dir / "cache" / folder).iterdir())[0]
    damage(entry)
    capsys.readouterr()
    runner.run(_cfg(results), progress=False)
    out = capsys.readouterr().out
    assert f"warning: damaged cache entry {entry}" in out and "recomputing it" in out, out
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["units"]["from_cache"] == manifest["units"]["total"] - 1
    cols = ["seconds_per_image", "peak_mem_mb"]
    pd.testing.assert_frame_equal(
        read_scores(run_dir / "scores.csv").drop(columns=cols),
        read_scores(finished[1] / "scores.csv").drop(columns=cols),
    )
    runner.run(_cfg(results), progress=False)  # the recomputed entry is sound again
    assert "damaged" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "Expecting property name"),
        ("[1, 2]", "no config object"),
        ('{"config": 3}', "no config object"),
        (b"\xff\xfe\x00", "decode"),
    ],
)
def test_a_damaged_manifest_is_a_one_line_error_naming_it(finished, tmp_path, capsys, content, why):
    results, run_dir = _copy_run(finished, tmp_path)
    path = run_dir / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _tree(run_dir)
    line = _one_line_error(
        capsys, ["run", "--results", str(results), "--name", run_dir.name, *sum((["--set", o] for o in CHEAP), [])]
    )
    assert f"{path} is damaged" in line and why in line and "delete that file" in line
    assert _tree(run_dir) == before and path.read_bytes() == (
        content if isinstance(content, bytes) else content.encode()
    )


def test_another_config_is_refused_even_for_an_unfinished_run(tmp_path, monkeypatch):
    """The config is recorded before any work: a run killed half-way is protected too (one killed
    before it produced anything takes its record back: there is nothing to protect)."""
    store = cache.store

    def killed_after_one(*args, **kwargs):
        store(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "store", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        runner.run(_cfg(tmp_path), progress=False)
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["status"] == "running"
    monkeypatch.undo()
    with pytest.raises(BenchError, match="another config") as refused:
        runner.run(_cfg(tmp_path, "h", "data.per_cell=1"), progress=False)
    # the refusal says what differs and the ways out
    assert "data.per_cell (2 there, 1 here)" in str(refused.value)
    assert "give this run another --name" in str(refused.value) and f"delete {tmp_path / 'h'}" in str(refused.value)
    assert runner.run(_cfg(tmp_path), progress=False)  # the same config resumes


# ----------------------------------------------------------------------------- one run per directory


def test_a_second_run_on_a_busy_directory_fails_at_once(tmp_path):
    run_dir = tmp_path / "h"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as fh:  # another process holding the run
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write("4242")
        fh.flush()
        with pytest.raises(BenchError, match=r"is in use by another run \(pid 4242\)"):
            runner.run(_cfg(tmp_path), progress=False)
    assert not (run_dir / "manifest.json").exists()
    runner.run(_cfg(tmp_path), progress=False)  # released: it runs


# ----------------------------------------------------------------------------- failures are retried


def test_failed_units_are_recorded_and_retried_by_the_next_run(tmp_path, capsys):
    seen: set[float] = set()
    calls = []

    @register_explainer("test.flaky", library="test")
    def flaky(model, inputs, targets, *, background):
        """Fails the first time it sees a shard (a transient failure: out of memory), then works."""
        calls.append(1)
        key = float(inputs.sum())
        if key not in seen:
            seen.add(key)
            raise RuntimeError("CUDA out of memory (simulated)")
        return Attribution(inputs.clone())

    try:
        over = ['explain.names=["random", "test.flaky"]']
        run_dir = runner.run(_cfg(tmp_path, "h", *over), progress=False)
        first = read_scores(run_dir / "scores.csv")
        assert (first[first.explainer == "test.flaky"].status == "error").all()
        assert "failures are not cached: the next run retries them" in capsys.readouterr().out
        shards = json.loads((run_dir / "manifest.json").read_text())["units"]["total"] // 2
        runner.run(_cfg(tmp_path, "h", *over), progress=False)
        second = read_scores(run_dir / "scores.csv")
        assert (second[second.explainer == "test.flaky"].status == "ok").all()
        assert len(calls) == 2 * shards  # each failed shard once more; random came from the cache
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["units"]["from_cache"] == shards and manifest["units"]["failed"] == []
    finally:
        EXPLAINERS.unregister("test.flaky")


# ----------------------------------------------------------------------------- data


def _npz(path: Path, n: dict[str, int], labels: dict[str, int] | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, 28, 28), dtype=np.uint8)
        lab = np.arange(k) % 2 if (labels or {}).get(split) is None else np.full(k, labels[split])
        arrays[f"{split}_labels"] = lab.astype(np.uint8).reshape(k, 1)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


@pytest.mark.parametrize(
    "n, labels, needle",
    [
        ({"train": 40, "val": 10, "test": 0}, None, "the test split of pneumoniamnist ({f}) has no images"),
        ({"train": 40, "val": 0, "test": 10}, None, "the val split of pneumoniamnist ({f}) has no images"),
        (
            {"train": 40, "val": 10, "test": 10},
            {"test": 1},
            "the test split of pneumoniamnist ({f}) holds only class 1",
        ),
    ],
)
def test_empty_or_single_class_splits_are_refused_before_training(tmp_path, capsys, n, labels, needle):
    f = _npz(tmp_path / "data.npz", n, labels)
    line = _one_line_error(
        capsys,
        [
            "run",
            "--results",
            str(tmp_path / "res"),
            "--data-file",
            str(f),
            "--set",
            'models.names=["tiny"]',
            "--set",
            'models.stages=["pre"]',
            "--set",
            'device="cpu"',
        ],
    )
    assert needle.format(f=os.path.abspath(f)) in line
    assert not (tmp_path / "res" / "checkpoints").exists()  # nothing was trained
    line = _one_line_error(
        capsys, ["train", "--model", "tiny", "--data-file", str(f), "--results", str(tmp_path / "res2")]
    )
    assert needle.format(f=os.path.abspath(f)) in line and not (tmp_path / "res2").exists()


def test_json_outputs_are_strict(finished, tmp_path):
    _, run_dir = finished
    for path in [
        run_dir / "manifest.json",
        *(run_dir / "cache" / "scores").glob("*.json"),
        *run_dir.parent.glob("checkpoints/*.json"),
    ]:
        _strict_json(path)
    atomic_write_json(tmp_path / "x.json", {"auc": float("nan"), "a": [float("inf"), 1.5], "n": np.float64("nan")})
    assert _strict_json(tmp_path / "x.json") == {"a": [None, 1.5], "auc": None, "n": None}


# ----------------------------------------------------------------------------- messages


def test_messages_are_cut_at_a_word_boundary():
    text = "word " * 200
    short = one_line(text, 60)
    assert len(short) <= 60 and short.endswith(" …") and short[:-2].split() == ["word"] * len(short[:-2].split())
    assert one_line("a  b\n c") == "a b c"
    assert str(BenchError("line one\nline two")) == "line one line two"


def test_a_long_failure_message_keeps_whole_words(tmp_path):
    @register_explainer("test.verbose", library="test")
    def verbose(model, inputs, targets, *, background):
        raise RuntimeError(" ".join(f"token{i}" for i in range(400)))

    try:
        run_dir = runner.run(_cfg(tmp_path, "h", 'explain.names=["test.verbose"]'), progress=False)
    finally:
        EXPLAINERS.unregister("test.verbose")
    message = read_scores(run_dir / "scores.csv").message.iloc[0]
    assert message.endswith(" …") and re.fullmatch(r"RuntimeError: (token\d+ )+…", message), message


def test_fixes_that_apply(tmp_path, synthetic_data, tiny_checkpoint):
    ckpt, _ = tiny_checkpoint
    with pytest.raises(BenchError) as exc:
        tune_model(
            ckpt,
            TuneConfig(unfreeze=("fc", "layer4"), epochs=1),
            *synthetic_data,
            out=tmp_path / "p.pt",
            device="cpu",
            progress=False,
        )
    msg = str(exc.value)
    model, _ = load_checkpoint(ckpt)
    with_params = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    assert "cannot unfreeze layer4" in msg and f"e.g. {with_params[-1]!r}" in msg and "fc,layer4" not in msg
    with pytest.raises(BenchError) as exc:
        load_checkpoint(ckpt, expected_model="resnet18")
    assert "--model" not in str(exc.value) and "use a resnet18 checkpoint" in str(exc.value)


def test_report_names_the_file_and_line_of_a_bad_value(finished, tmp_path, capsys):
    _, run_dir = _copy_run(finished, tmp_path)
    path = run_dir / "scores.csv"
    lines = path.read_text().splitlines()
    cols = lines[0].split(",")
    row = lines[3].split(",")
    row[cols.index("value")] = "abc"
    lines[3] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")
    line = _one_line_error(capsys, ["report", str(run_dir)])
    assert f"{path} line 4: column 'value' holds 'abc', not a number" in line


# ============================================================================= second pass
# values the config accepted but the run could not, absurd data, broken checkpoints and sidecars,
# noise and model failures in bench.evaluate (the results tree and unwritable places:
# tests/test_results_tree.py; signals and argparse: tests/test_cli.py)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["seed=-1"], "config value seed: must be an integer in [0, 4294967295], got -1"),
        ([f"seed={2**70}"], f"config value seed: must be an integer in [0, 4294967295], got {2**70}"),
        (["train.seed=-3"], "seed must be an integer in [0, 4294967295], got -3"),
        (["tune.seed=-3"], "seed must be an integer in [0, 4294967295], got -3"),
        ([f"models.seeds=[0, {2**64}]"], "models.seeds: must be a list of distinct integers in [0, 4294967295]"),
        ([f"reliability.seed={2**64}"], "reliability.seed: must be an integer in [0, 4294967295]"),
        (['explain.params={"random" = {seed = -1}}'], "explain.params.random.seed = -1 must be in [0, 4294967295]"),
        (['data.dataset="synthetic"', "data.options.seed=-1"], "data.options.seed = -1 must be in [0, 4294967295]"),
    ],
)
def test_seeds_out_of_range_are_refused_at_config_time(overrides, needle):
    with pytest.raises(BenchError) as exc:
        load_config(None, overrides)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_a_seed_out_of_range_in_evaluate_or_train_is_one_line(capsys, monkeypatch):
    import bench
    from models import build_model

    with pytest.raises(BenchError, match=r"seed: must be an integer in \[0, 4294967295\]"):
        bench.evaluate(build_model("tiny").eval(), torch.rand(2, 1, 28, 28), seed=2**70, verbose=False)
    monkeypatch.setattr("models.training.fit", lambda *a, **k: pytest.fail("trained with a bad seed"))
    line = _one_line_error(capsys, ["train", "--model", "tiny", "--dataset", "synthetic", "--seed", "-1"])
    assert "seed must be an integer in [0, 4294967295], got -1" in line


def test_a_multiline_set_is_refused_not_cut():
    with pytest.raises(BenchError, match="holds more than one value"):
        load_config(None, ['data.per_cell=2\nname="other"'])
    with pytest.raises(BenchError, match="holds more than one value"):
        load_config(None, ['name="a"\nseed=3'])
    assert load_config(None, ["models.seeds=[1,\n 2]"]).models.seeds == (1, 2)  # one value over two lines


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", 'name = "x"\n'.encode("utf-16"), 'name = "caf\u00e9"\n'.encode("latin-1")],
    ids=["binary", "utf-16", "latin-1"],
)
def test_config_files_that_are_not_utf8_are_one_line(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    with pytest.raises(BenchError) as exc:
        load_config(path)
    assert f"config file {path} is not UTF-8 text" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "name, needle",
    [("a" * 300, "at most 100 characters"), ("run\n", "plain folder name"), ("run\nx", "plain folder name")],
)
def test_long_or_multiline_names_are_refused_at_config_time(name, needle):
    with pytest.raises(BenchError, match="plain folder name") as exc:
        load_config(None, [f"name={json.dumps(name)}"])
    assert needle in str(exc.value)


def test_multiline_model_names_are_refused():
    import bench
    from models import build_model
    from models.user import UserModelSpec

    with pytest.raises(BenchError, match="model_name"):
        bench.evaluate(build_model("tiny").eval(), torch.rand(2, 1, 28, 28), model_name="m\n", verbose=False)
    with pytest.raises(BenchError, match="a model name is"):
        UserModelSpec.from_table("m\n", {"factory": "models.user:torchvision_resnet", "checkpoint": "x.pt"})
    with pytest.raises(BenchError, match="a variant name is"):
        load_config(None, ['tune.variants={"a\\n" = {epochs = 1}}'])


def test_the_unfreeze_check_runs_at_config_time():
    with pytest.raises(BenchError) as exc:  # the tiny model has no layer4: refused before any training
        load_config(None, ['models.names=["tiny"]'])
    assert "tune: cannot unfreeze layer4" in str(exc.value) and "'fc'" in str(exc.value)
    with pytest.raises(BenchError, match="tune.variants.a: cannot unfreeze layer9"):
        load_config(
            None, ['models.names=["tiny"]', 'tune.unfreeze=["fc"]', 'tune.variants={a = {unfreeze = ["layer9"]}}']
        )
    load_config(None, ['models.names=["tiny"]', 'models.stages=["pre"]'])  # no tuning: no check
    load_config(None, ['models.names=["tiny"]', 'tune.variants={a = {unfreeze = ["fc"]}}'])  # tunes with a only
    load_config(None, ['models.names=["tiny"]', 'tune.unfreeze=["fc", "layer2"]'])


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (['explain.names=["captum.integrated_gradient"]'], "did you mean 'captum.integrated_gradients'?"),
        (["data.per_cel=2"], "did you mean 'per_cell'?"),
        (['explain.params={"captum.integrated_gradients" = {n_step = 4}}'], "did you mean 'n_steps'?"),
        (["train.epoch=2"], "did you mean 'epochs'?"),
        (['models.names=["resnet19"]'], "did you mean 'resnet18'?"),
    ],
)
def test_unknown_names_suggest_the_nearest(overrides, needle):
    with pytest.raises(BenchError) as exc:
        load_config(None, overrides)
    assert needle in str(exc.value)


def test_a_refused_rerun_names_what_differs_and_the_way_out(finished, capsys):
    results, run_dir = finished
    with pytest.raises(BenchError) as exc:
        runner.run(_cfg(results, "h", "data.per_cell=1"), progress=False)
    msg = str(exc.value)
    assert "data.per_cell (2 there, 1 here)" in msg and "--name" in msg and f"delete {run_dir}" in msg


# ----------------------------------------------------------------------------- absurd data


def test_array_headers_are_checked_against_the_file_size(tmp_path, clean_data_env):
    """A header claiming 10^11 images must not make numpy allocate 71 TiB."""
    import zipfile

    from datasets import load_split

    path = _npz(tmp_path / "d.npz", {"train": 40, "val": 10, "test": 10})
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "train_images.npy":
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    head, {"descr": "|u1", "fortran_order": False, "shape": (10**11, 28, 28)}
                )
                data = head.getvalue() + data[len(head.getvalue()) :]
            dst.writestr(info, data)
    with pytest.raises(BenchError) as exc:
        load_split("pneumoniamnist", "train", data_file=str(forged))
    msg = str(exc.value)
    assert "train_images claims shape (100000000000, 28, 28)" in msg and "holds only" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- checkpoints and sidecars


def _broken_checkpoint(tmp_path: Path, tiny_checkpoint, change=None, sidecar=None) -> Path:
    src, side = tiny_checkpoint
    ck = torch.load(src, weights_only=True)
    if change is not None:
        change(ck)
    out = tmp_path / "broken.pt"
    torch.save(ck, out)
    sidecar_path(out).write_text(json.dumps(side if sidecar is None else sidecar))
    return out


def _nan_weight(ck):
    next(iter(ck["state_dict"].values())).view(-1)[0] = float("nan")


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda ck: ck.pop("model"), "has no 'model' entry"),
        (lambda ck: ck.update(model=7), "has no 'model' entry"),
        (lambda ck: ck.update(model_kwargs={"in_channels": 1, "depth": 3}), "model_kwargs has 'depth'"),
        (lambda ck: ck.update(model_kwargs=[1, 2]), "model_kwargs is not a table"),
        (lambda ck: ck.update(state_dict=[1]), "state_dict is not"),
        (_nan_weight, "holds 1 NaN or infinite weight"),
    ],
)
def test_broken_checkpoints_are_one_line(tmp_path, tiny_checkpoint, change, needle):
    path = _broken_checkpoint(tmp_path, tiny_checkpoint, change)
    with pytest.raises(BenchError) as exc:
        load_checkpoint(path)
    assert needle in str(exc.value) and str(path) in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "sidecar, needle",
    [
        ({}, "has no 'test'"),
        ([], "is not a JSON object"),
        ({"test": {}, "test_preds": "x", "config": {}}, "test_preds"),
        ("nan", "is not a JSON object"),
    ],
)
def test_broken_sidecars_are_one_line(tmp_path, tiny_checkpoint, sidecar, needle):
    path = _broken_checkpoint(tmp_path, tiny_checkpoint, sidecar=sidecar)
    with pytest.raises(BenchError) as exc:
        read_sidecar(path)
    assert needle in str(exc.value) and str(sidecar_path(path)) in str(exc.value)


def test_a_broken_checkpoint_is_refused_before_any_training(tmp_path, tiny_checkpoint, monkeypatch):
    from datasets import load_split

    results = tmp_path / "res"
    train = load_split("synthetic", "train", n=40)
    cfg = TrainConfig(model="tiny", epochs=1, batch_size=32, seed=1, dataset="synthetic", size=28)
    planted = default_checkpoint_path(cfg, train.fingerprint, results / "checkpoints")
    planted.parent.mkdir(parents=True)
    shutil.copy(_broken_checkpoint(tmp_path, tiny_checkpoint, sidecar={}), planted)
    sidecar_path(planted).write_text("{}")
    for loop in ("models.training.fit", "models.tuning.fit"):
        monkeypatch.setattr(loop, lambda *a, **k: pytest.fail("trained before the broken checkpoint was seen"))
    with pytest.raises(BenchError, match="has no 'test'"):
        runner.run(_cfg(results, "h", "models.seeds=[0, 1]"), progress=False)
    assert not (results / "h" / "manifest.json").exists()


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"n": 20, "seed": 3}, "evaluated on 64 test images, this data has 20"),
        ({"n": 64, "seed": 4}, "trained on synthetic"),
    ],
)
def test_tune_refuses_other_data_before_training(tmp_path, tiny_checkpoint, monkeypatch, options, needle):
    from datasets import load_split

    ckpt, _ = tiny_checkpoint
    splits = [load_split("synthetic", s, **options) for s in ("train", "val", "test")]
    monkeypatch.setattr("models.tuning.fit", lambda *a, **k: pytest.fail("trained before the data was checked"))
    with pytest.raises(BenchError) as exc:
        tune_model(
            ckpt, TuneConfig(unfreeze=("fc",), epochs=1), *splits, out=tmp_path / "p.pt", device="cpu", progress=False
        )
    assert needle in str(exc.value)


def test_a_raw_pickle_checkpoint_prints_no_warning(tmp_path, capsys):
    import pickle
    import warnings

    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"format": "x"}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BenchError, match="cannot be read"):
            load_checkpoint(path)
    assert [str(w.message) for w in caught] == []


# ----------------------------------------------------------------------------- models in bench.evaluate


class BatchLimited(torch.nn.Module):
    """Works on a few images at a time, fails on larger batches (a fixed-size buffer)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.fc = torch.nn.Linear(2, 2)

    def forward(self, x):
        if x.shape[0] > 4:
            raise RuntimeError("buffer holds 4 images")
        return self.fc(self.conv(x).mean((2, 3)))


class Uncopyable(BatchLimited):
    def __init__(self):
        import threading

        super().__init__()
        self.lock = threading.Lock()

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize(
    "model, needle", [(BatchLimited, "the model fails on a batch of 16 images"), (Uncopyable, "cannot be copied")]
)
def test_model_failures_in_evaluate_are_one_line(model, needle):
    import bench

    with pytest.raises(BenchError) as exc:
        bench.evaluate(model(), torch.rand(16, 1, 28, 28), explainers=["random"], metrics=["drop_rate"], verbose=False)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_evaluate_emits_no_warnings():
    import warnings

    import bench
    from models import build_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bench.evaluate(
            build_model("tiny").eval(),
            torch.rand(8, 1, 28, 28),
            labels=[0, 1] * 4,
            explainers=["random", "edge"],
            metrics=["deletion_auc"],
            verbose=False,
            metric_params={"deletion_auc": {"steps": 4}},
            overrides=["reliability.bootstrap=100"],
        )
    assert [f"{w.filename}:{w.lineno}: {w.message}" for w in caught] == []
