"""Hostile input: nothing written outside the results folder, every bad value a one-line error before
any work, a damaged cache never blocks a run, one run per directory, failures retried, bad data
refused, strict JSON, messages that are whole and apply.

Runs use the synthetic data set and the tiny model with the cheapest explainers and metric.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
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
from models import training as T

CHEAP = ['data.dataset="synthetic"', "data.options.n=40", "data.per_cell=2", "data.background_size=4",
         'models.names=["tiny"]', 'models.stages=["pre"]', "train.epochs=1", "train.batch_size=32",
         'explain.names=["random", "edge"]', "explain.shard_size=4", 'metrics.names=["deletion_auc"]',
         'metrics.params={"deletion_auc" = {steps = 4}}', 'device="cpu"', "figures.enabled=false",
         "reliability.bootstrap=100"]


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
    line = _one_line_error(capsys, ["run", "--results", str(results), "--name", name, *sum((["--set", o] for o in CHEAP), [])])
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


@pytest.mark.parametrize("override, needle", [
    ('explain.params={"random" = {seed = "3"}}', "explain.params.random.seed = '3' must be an integer"),
    ('metrics.params={"drop_rate" = {frac = 2.0}}', "metrics.params.drop_rate.frac = 2.0 must be in (0, 1]"),
    ('metrics.params={"deletion_auc" = {steps = 0}}', "metrics.params.deletion_auc.steps = 0 must be >= 1"),
    ('metrics.params={"randomisation_similarity" = {steps = -1}}', "metrics.params.randomisation_similarity.steps = -1 must be >= 0"),
    ('metrics.params={"deletion_auc" = {substrate = "black"}}', "is not one of 'zero', 'mean', 'blur'"),
    ('metrics.params={"road_morf" = {percentages = [0.5, 0.2]}}', "must be a non-empty list of increasing fractions"),
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
    ('tune.unfreeze=[]', "unfreeze must name at least one module"),
    ('models.stages=["post"]', 'must be ["pre"] or ["pre", "post"]'),
])
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
    cfg = load_config(None, ['explain.params."shap.partition".max_evals=100',
                             "explain.params.'captum.integrated_gradients'.n_steps=8"])
    assert cfg["explain"]["params"] == {"shap.partition": {"max_evals": 100},
                                        "captum.integrated_gradients": {"n_steps": 8}}
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
    "attribution: wrong shape, valid checksum": ("attributions", lambda p: _edit_attr(
        p, True, values=torch.zeros(1, 1, 5, 5))),
    "attribution: changed value": ("attributions", lambda p: _edit_attr(
        p, False, values=torch.load(p, weights_only=True)["values"] + 1e-3)),
    "scores: binary garbage": ("scores", lambda p: p.write_bytes(b"\x00\xff" * 40)),
    "scores: JSON of another shape": ("scores", lambda p: p.write_text('{"metrics": [1, 2]}')),
    "scores: changed value": ("scores", lambda p: _edit_scores(p, False, _bump)),
    "scores: a value short, valid checksum": ("scores", lambda p: _edit_scores(
        p, True, lambda r: r["metrics"][next(iter(r["metrics"]))].pop())),
    "scores: other metrics, valid checksum": ("scores", lambda p: _edit_scores(
        p, True, lambda r: r["metrics"].update(extra=r["metrics"][next(iter(r["metrics"]))]))),
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
    pd.testing.assert_frame_equal(read_scores(run_dir / "scores.csv").drop(columns=cols),
                                  read_scores(finished[1] / "scores.csv").drop(columns=cols))
    runner.run(_cfg(results), progress=False)  # the recomputed entry is sound again
    assert "damaged" not in capsys.readouterr().out


@pytest.mark.parametrize("content, why", [("{not json", "Expecting property name"), ("[1, 2]", "no config object"),
                                          ('{"config": 3}', "no config object"), (b"\xff\xfe\x00", "decode")])
def test_a_damaged_manifest_is_a_one_line_error_naming_it(finished, tmp_path, capsys, content, why):
    results, run_dir = _copy_run(finished, tmp_path)
    path = run_dir / "manifest.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _tree(run_dir)
    line = _one_line_error(capsys, ["run", "--results", str(results), "--name", run_dir.name,
                                    *sum((["--set", o] for o in CHEAP), [])])
    assert f"{path} is damaged" in line and why in line and "delete that file" in line
    assert _tree(run_dir) == before and path.read_bytes() == (content if isinstance(content, bytes)
                                                                else content.encode())


def test_another_config_is_refused_even_for_an_unfinished_run(tmp_path, monkeypatch):
    """The config is recorded before any work: a run killed half-way is protected too."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "execute_units", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.run(_cfg(tmp_path), progress=False)
    assert json.loads((tmp_path / "h" / "manifest.json").read_text())["status"] == "running"
    monkeypatch.undo()
    with pytest.raises(BenchError, match="another config"):
        runner.run(_cfg(tmp_path, "h", "data.per_cell=1"), progress=False)
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


@pytest.mark.parametrize("n, labels, needle", [
    ({"train": 40, "val": 10, "test": 0}, None, "the test split of pneumoniamnist ({f}) has no images"),
    ({"train": 40, "val": 0, "test": 10}, None, "the val split of pneumoniamnist ({f}) has no images"),
    ({"train": 40, "val": 10, "test": 10}, {"test": 1}, "the test split of pneumoniamnist ({f}) holds only class 1"),
])
def test_empty_or_single_class_splits_are_refused_before_training(tmp_path, capsys, n, labels, needle):
    f = _npz(tmp_path / "data.npz", n, labels)
    line = _one_line_error(capsys, ["run", "--results", str(tmp_path / "res"), "--data-file", str(f), "--set",
                                    'models.names=["tiny"]', "--set", 'device="cpu"'])
    assert needle.format(f=os.path.abspath(f)) in line
    assert not (tmp_path / "res" / "checkpoints").exists()  # nothing was trained
    line = _one_line_error(capsys, ["train", "--model", "tiny", "--data-file", str(f), "--results",
                                    str(tmp_path / "res2")])
    assert needle.format(f=os.path.abspath(f)) in line and not (tmp_path / "res2").exists()


def test_json_outputs_are_strict(finished, tmp_path):
    _, run_dir = finished
    for path in [run_dir / "manifest.json", *(run_dir / "cache" / "scores").glob("*.json"),
                 *run_dir.parent.glob("checkpoints/*.json")]:
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
        T.tune_model(ckpt, T.TuneConfig(unfreeze=("fc", "layer4"), epochs=1), *synthetic_data, out=tmp_path / "p.pt",
                     device="cpu", progress=False)
    msg = str(exc.value)
    model, _ = T.load_checkpoint(ckpt)
    with_params = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    assert "cannot unfreeze layer4" in msg and f"e.g. {with_params[-1]!r}" in msg and "fc,layer4" not in msg
    with pytest.raises(BenchError) as exc:
        T.load_checkpoint(ckpt, expected_model="resnet18")
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
