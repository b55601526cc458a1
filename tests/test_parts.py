"""A run in parts (bench/run/parts.py): the part configs, the nested sample, the image-picking
model of another seed, and the combined run (labels, owners, cross-part map similarity, checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.report.leaderboard import read_scores
from bench.report.rebuild import rebuild
from bench.run import parts as PT
from bench.run import plan as P
from bench.run.config import load_config, part_config
from bench.run.similarity import map_similarity, read_maps
from bench import metrics as M
from datasets import load_split
from tests.conftest import bench_error

pytestmark = pytest.mark.usefixtures("one_thread")

EXPLAINERS = ["captum.saliency", "captum.integrated_gradients", "random"]
BASE = """
name = "study"
results_dir = "{results}"
checkpoint_dir = "{ck}"
device = "cpu"
[data]
dataset = "synthetic"
per_cell = 3
background_size = 8
[data.options]
n = 96
[models]
names = ["tiny"]
seeds = [0, 1]
stages = ["pre", "post"]
[train]
epochs = 3
batch_size = 32
lr = 0.01
[tune]
epochs = 1
unfreeze = ["fc"]
[explain]
names = {explainers}
shard_size = 4
[explain.params."captum.integrated_gradients"]
n_steps = 8
[metrics]
names = ["drop_rate", "deletion_auc"]
[metrics.params.deletion_auc]
steps = 8
[reliability]
substrates = []
imputation = false
bootstrap = 100
[figures]
enabled = false
[report]
maps = true
[parts.s0-pre]
models = {{ seeds = [0], stages = ["pre"] }}
[parts.s1-pre]
models = {{ seeds = [1], stages = ["pre"], select_seed = 0 }}
[parts.s0-post]
models = {{ seeds = [0] }}
data = {{ nested_per_cell = 1 }}
"""


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "study.toml"
    path.write_text(
        BASE.format(results=tmp_path / "results", ck=tmp_path / "ck", explainers=json.dumps(EXPLAINERS)) + extra
    )
    return path


# ----------------------------------------------------------------------------- configs


def test_a_part_is_the_config_with_its_table_merged_over_it(tmp_path):
    cfg = load_config(_config(tmp_path))
    s1 = part_config(cfg, "s1-pre")
    assert (s1.name, s1.models.seeds, s1.models.stages, s1.models.select_seed) == ("s1-pre", (1,), ("pre",), 0)
    assert Path(s1.results_dir) == tmp_path / "results" / "study" / "parts"
    assert s1.checkpoint_dir == str(tmp_path / "ck") and s1.parts == {}
    assert s1.explain == cfg.explain and s1.metrics == cfg.metrics  # what the part does not set is the study's
    post = part_config(cfg, "s0-post")
    assert post.models.stages == ("pre", "post") and post.data.nested_per_cell == 1 and post.data.per_cell == 3


@pytest.mark.parametrize(
    "extra, needle",
    [
        ('[parts.bad]\nname = "x"\n', "parts.bad.name"),
        ("[parts.bad]\nseed = 3\n", "parts.bad.seed"),
        ("[parts.bad]\ndata = { nested_per_cell = 4 }\n", "data.nested_per_cell"),
        ("[parts.bad]\nmodels = { select_seed = -2 }\n", "models.select_seed"),
        ("[parts.bad]\nmodels = { sedes = [1] }\n", "models.sedes"),
    ],
)
def test_a_bad_part_is_one_line_naming_the_key(tmp_path, extra, needle):
    def make():
        cfg = load_config(_config(tmp_path, extra))
        return part_config(cfg, "bad")

    msg = bench_error(make)
    assert needle in msg and "\n" not in msg


def test_an_unknown_part_says_which_there_are(tmp_path):
    cfg = load_config(_config(tmp_path))
    msg = bench_error(part_config, cfg, "s0-pos")
    assert "s0-pos" in msg and "s0-post" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- the nested sample


def test_the_nested_sample_is_a_seeded_subset_of_the_sample(tmp_path):
    test = load_split("synthetic", "test", n=200, seed=3)
    preds = torch.as_tensor(np.random.default_rng(0).integers(0, 2, len(test)))
    cfg = load_config(_config(tmp_path), ["data.per_cell=10"])
    full = set(P.select_images(test, preds, cfg, 0).tolist())
    for k in (1, 4, 10):
        nested = load_config(_config(tmp_path), ["data.per_cell=10", f"data.nested_per_cell={k}"])
        sub = P.select_images(test, preds, nested, 0).tolist()
        assert set(sub) <= full and sub == sorted(sub)
        assert sub == P.select_images(test, preds, nested, 0).tolist()  # seeded
        cells = np.array(P.confusion_cells(test.labels.numpy(), preds.numpy(), 2))[sub]
        assert all((cells == c).sum() == min(k, 10) for c in ("TP", "FP", "FN", "TN"))
    assert (
        set(
            P.select_images(
                test, preds, load_config(_config(tmp_path), ["data.per_cell=10", "data.nested_per_cell=10"]), 0
            ).tolist()
        )
        == full
    )


# ----------------------------------------------------------------------------- the combined run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parts")
    cfg = load_config(_config(tmp))
    parent = PT.run_parts(cfg, progress=False, say=lambda s: None)
    return tmp, cfg, parent


def _part_scores(cfg, name):
    part = part_config(cfg, name)
    return read_scores(PT.part_dir(part) / "scores.csv")


def test_every_part_explains_the_images_seed_0_picked(study):
    _, cfg, parent = study
    s0, s1, post = (_part_scores(cfg, n) for n in ("s0-pre", "s1-pre", "s0-post"))
    images = set(s0["image"])
    assert set(s1["image"]) == images and len(images) >= 8
    assert set(post["image"]) < images
    assert post.groupby(["stage", "explainer", "metric"])["image"].nunique().max() <= 4  # 1 per cell
    s1_manifest = json.loads((PT.part_dir(part_config(cfg, "s1-pre")) / "manifest.json").read_text())
    s0_manifest = json.loads((PT.part_dir(part_config(cfg, "s0-pre")) / "manifest.json").read_text())
    pre0 = next(c["sha256"] for c in s0_manifest["checkpoints"] if c["stage"] == "pre")
    assert s1_manifest["selection"]["tiny"]["sha256"] == pre0  # picked by seed 0's model, not its own
    assert all(c["sha256"] != pre0 for c in s1_manifest["checkpoints"])  # which it did not explain
    sample = pd.read_csv(PT.part_dir(part_config(cfg, "s1-pre")) / "sample.csv")
    assert set(sample["model"]) == {"tiny@seed0"}


def test_the_combined_run_takes_each_stage_from_the_part_that_scored_most(study):
    _, cfg, parent = study
    scores = read_scores(parent / "scores.csv")
    s0 = _part_scores(cfg, "s0-pre")
    assert set(scores["model"]) == {"tiny@seed0", "tiny@seed1"}
    pre0 = scores[(scores["model"] == "tiny@seed0") & (scores["stage"] == "pre")]
    key = ["explainer", "metric", "image"]
    pd.testing.assert_frame_equal(
        pre0.drop(columns="model").sort_values(key).reset_index(drop=True),
        s0.drop(columns="model").sort_values(key).reset_index(drop=True),
    )
    post = _part_scores(cfg, "s0-post")
    assert set(scores["stage"]) == {"pre", "post"}
    assert len(scores[scores["stage"] == "post"]) == len(post[post["stage"] == "post"])
    manifest = json.loads((parent / "manifest.json").read_text())
    assert manifest["kind"] == "parts" and manifest["status"] == "complete"
    assert [p["part"] for p in manifest["parts"]] == ["s0-pre", "s1-pre", "s0-post"]
    # the pre rows the post part scored again on its subset: compared, recorded
    n_again = post[(post["stage"] == "pre") & (post["metric"] == "drop_rate") & (post["status"] == "ok")]
    assert manifest["overlap"]["drop_rate"]["rows"] == len(n_again)
    assert manifest["overlap"]["drop_rate"]["max_abs_diff"] < 1e-4


def test_seed_similarity_across_parts_comes_from_their_maps(study):
    _, cfg, parent = study
    sim = pd.read_csv(parent / "similarity.csv")
    seeds = sim[sim["comparison"] == "seed0 vs seed1"]
    assert set(seeds["explainer"]) == set(EXPLAINERS) and set(seeds["model"]) == {"tiny"}
    m0 = read_maps(PT.part_dir(part_config(cfg, "s0-pre")) / "maps.npz")
    m1 = read_maps(PT.part_dir(part_config(cfg, "s1-pre")) / "maps.npz")
    (i0, a), (i1, b) = m0[("tiny", "captum.saliency")], m1[("tiny", "captum.saliency")]
    assert np.array_equal(i0, i1)
    rho, top = map_similarity(
        M.preprocess_attributions(torch.as_tensor(a), cfg.metrics.attribution),
        M.preprocess_attributions(torch.as_tensor(b), cfg.metrics.attribution),
    )
    got = seeds[seeds["explainer"] == "captum.saliency"].sort_values("image")
    np.testing.assert_allclose(got["spearman"], rho, rtol=1e-6)
    np.testing.assert_allclose(got["top_overlap"], top, rtol=1e-6)
    assert rho.mean() < 0.999  # two trainings, two maps
    assert {"pre vs post"} <= set(sim["comparison"])


def test_report_rebuilds_the_combined_run_byte_for_byte(study):
    _, _, parent = study
    before = {
        f: (parent / f).read_bytes() for f in ("leaderboard.md", "leaderboard.csv", "prepost.csv", "stability.csv")
    }
    rebuild(parent)
    assert {f: (parent / f).read_bytes() for f in before} == before


def test_a_finished_part_is_taken_as_it_is(study, monkeypatch):
    tmp, cfg, parent = study

    def boom(*a, **k):
        raise AssertionError("a finished part ran again")

    monkeypatch.setattr(PT.runner, "run", boom)
    said: list[str] = []
    PT.run_parts(cfg, progress=False, say=said.append)
    assert sum("taken as it is" in s for s in said) == 3


def test_parts_that_explained_different_models_are_refused(study, tmp_path):
    import shutil

    tmp, cfg, parent = study
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "results", copy / "results")
    text = (tmp / "study.toml").read_text().replace(str(tmp / "results"), str(copy / "results"))
    (copy / "study.toml").write_text(text)
    cfg2 = load_config(copy / "study.toml")
    mpath = PT.part_dir(part_config(cfg2, "s0-post")) / "manifest.json"
    record = json.loads(mpath.read_text())
    record["checkpoints"][0]["sha256"] = "0" * 64
    mpath.write_text(json.dumps(record))
    msg = bench_error(PT.combine, cfg2, say=lambda s: None)
    assert "s0-pre" in msg and "s0-post" in msg and "\n" not in msg
    mpath.unlink()
    msg = bench_error(PT.combine, cfg2, say=lambda s: None)
    assert "--part s0-post" in msg and "\n" not in msg


def test_parts_may_split_the_explainers_of_one_model_stage(study):
    """Two parts explain one model stage with different explainers: the combined run holds both
    sets of rows, the same as one part with all the explainers scored (same checkpoint, same images)."""
    tmp, cfg, _ = study
    head, _, _ = BASE.partition("[parts.s0-pre]")
    text = head.replace('name = "study"', 'name = "split"').format(
        results=tmp / "results", ck=tmp / "ck", explainers=json.dumps(EXPLAINERS)
    )
    text += (
        '[parts.a]\nmodels = { seeds = [0], stages = ["pre"] }\n'
        'explain = { names = ["captum.saliency", "random"] }\n'
        '[parts.b]\nmodels = { seeds = [0], stages = ["pre"] }\n'
        'explain = { names = ["captum.integrated_gradients"] }\n'
    )
    (tmp / "split.toml").write_text(text)
    split = load_config(tmp / "split.toml")
    parent = PT.run_parts(split, progress=False, say=lambda s: None)
    got = read_scores(parent / "scores.csv")
    a, b = (read_scores(PT.part_dir(part_config(split, n)) / "scores.csv") for n in ("a", "b"))
    assert set(a["explainer"]) == {"captum.saliency", "random"}
    assert set(b["explainer"]) == {"captum.integrated_gradients"}
    assert len(got) == len(a) + len(b) and set(got["explainer"]) == set(EXPLAINERS)
    one = _part_scores(cfg, "s0-pre")  # the first study's seed-0 pre part: every explainer in one run
    key, cols = ["explainer", "metric", "image"], ["stage", "explainer", "metric", "image", "value", "status"]
    exact = one[one["explainer"] != "random"][cols].sort_values(key).reset_index(drop=True)
    mine = got[got["explainer"] != "random"][cols].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, exact, atol=1e-6)  # the timing columns differ, the scores not
    board = pd.read_csv(parent / "leaderboard.csv")
    assert set(board["explainer"]) >= set(EXPLAINERS)


def test_exported_parts_combine_to_the_same_study(study, tmp_path):
    """A finished part exported (tables gzipped, maps, manifest; no cache, figures or report) and
    combined elsewhere gives the study's tables byte for byte; exporting is deterministic."""
    tmp, cfg, parent = study
    text = (tmp / "study.toml").read_text().replace(str(tmp / "results"), str(tmp_path / "results"))
    (tmp_path / "study.toml").write_text(text)
    moved = load_config(tmp_path / "study.toml")
    for name, part in PT.parts_of(cfg):
        dest = PT.part_dir(part_config(moved, name))
        written = PT.export_part(PT.part_dir(part), dest)
        assert (dest / "scores.csv.gz") in written and not (dest / "scores.csv").exists()
        assert not (dest / "cache").exists() and not (dest / "figures").exists()
        again = PT.export_part(PT.part_dir(part), tmp_path / "again" / name)
        assert [p.read_bytes() for p in written] == [p.read_bytes() for p in again]
    assert all(PT.finished(p) for _, p in PT.parts_of(moved))
    combined = PT.combine(moved, say=lambda s: None)
    for f in ("scores.csv", "leaderboard.csv", "similarity.csv", "prepost.csv", "stability.csv"):
        assert (combined / f).read_bytes() == (parent / f).read_bytes(), f
    msg = bench_error(PT.export_part, tmp_path / "nothing", tmp_path / "out")
    assert "finished" in msg and "\n" not in msg


def test_a_broken_image_picking_checkpoint_stops_the_part_before_it_trains(study, tmp_path):
    """Part s1-pre picks its images with seed 0's pre model: a damaged seed-0 checkpoint is found
    with the run's own checkpoints, before seed 1 is trained (not after that training)."""
    import shutil

    tmp, _, _ = study
    ck = tmp_path / "ck"
    shutil.copytree(tmp / "ck", ck)
    text = (tmp / "study.toml").read_text().replace(str(tmp / "results"), str(tmp_path / "results"))
    (tmp_path / "study.toml").write_text(text.replace(str(tmp / "ck"), str(ck)))
    cfg = load_config(tmp_path / "study.toml")
    seed0 = [p for p in ck.glob("tiny-*seed0-*.pt") if "-post-" not in p.name]
    seed1 = [p for p in ck.glob("tiny-*seed1-*.pt") if "-post-" not in p.name]
    assert len(seed0) == 1 and len(seed1) == 1
    seed0[0].write_bytes(b"not a checkpoint")
    seed1[0].unlink()
    msg = bench_error(PT.run_parts, cfg, only="s1-pre", progress=False, say=lambda s: None)
    assert seed0[0].name in msg and "\n" not in msg
    assert not seed1[0].exists()  # nothing was trained
