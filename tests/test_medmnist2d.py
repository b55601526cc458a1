"""The other single-label 2D MedMNIST data sets: registration from medmnist.INFO, the loader's
validation on small MedMNIST-format files, K-class cells and metrics, and one end-to-end run on an
RGB multi-class file (no downloads: every file here is written by the test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from medmnist.info import INFO

from bench.core.schema import cell_names, confusion_cells, move_cells, ordered_cells
from bench.report.leaderboard import read_scores
from bench.run import runner
from bench.run.config import load_config
from bench.stats.classifier import classification_metrics, compare_classifiers
from datasets import DATASETS, load_split
from datasets import medmnist2d, pneumoniamnist as pm
from explainers import list_explainers
from explainers.base import get_explainer, relative_completeness_gap, run_explainer
from models import build_model
from models.checkpoints import read_sidecar
from tests.conftest import bench_error, calibrated, save_npz

pytestmark = pytest.mark.usefixtures("one_thread", "clean_data_env")

QUICK = Path(__file__).resolve().parents[1] / "configs" / "quick.toml"


def write_medmnist(
    path: Path,
    *,
    k: int,
    rgb: bool,
    n: dict[str, int],
    size: int = 28,
    seed: int = 0,
    drop: tuple[str, ...] = (),
    **override: np.ndarray,
) -> Path:
    """A MedMNIST-format file: ``{split}_images`` uint8 (N, H, W) or (N, H, W, 3), ``{split}_labels``
    uint8 (N, 1). Class c is learnable: a bright square at a class-specific place (and, in RGB, in
    a class-specific colour channel) on noise."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for s, count in n.items():
        labels = np.arange(count) % k
        images = rng.integers(0, 90, (count, size, size, 3) if rgb else (count, size, size), dtype=np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 3)
            y, x = 3 + 7 * r, 3 + 7 * q
            if rgb:
                images[i, y : y + 6, x : x + 6, c % 3] = 250
            else:
                images[i, y : y + 6, x : x + 6] = 250
        arrays[f"{s}_images"] = images
        arrays[f"{s}_labels"] = labels.astype(np.uint8).reshape(count, 1)
    arrays.update(override)
    return save_npz(path, arrays, drop=drop)


SMALL = {"train": 12, "val": 8, "test": 8}


# ---------------------------------------------------------------- registration


def test_every_single_label_2d_flag_is_registered_from_info():
    expected = {f for f, i in INFO.items() if not f.endswith("3d") and i["task"] != "multi-label, binary-class"}
    assert expected <= set(DATASETS.names())
    assert "chestmnist" not in DATASETS and not any(f.endswith("3d") for f in DATASETS.names())
    assert set(medmnist2d.FLAGS) == expected - {"pneumoniamnist"}
    for flag in medmnist2d.FLAGS:
        meta = DATASETS.get(flag).meta
        assert meta["in_channels"] == INFO[flag]["n_channels"] and meta["num_classes"] == len(INFO[flag]["label"])
        assert meta["sizes"] == (28, 64, 128, 224) and meta["has_masks"] is False
        assert set(DATASETS.get(flag).params()) == {"size", "data_file", "data_root", "download"}
    assert DATASETS.get("dermamnist").meta["in_channels"] == 3 and DATASETS.get("retinamnist").meta["num_classes"] == 5


# ---------------------------------------------------------------- loading


def test_binary_grayscale(tmp_path):
    path = write_medmnist(tmp_path / "breastmnist.npz", k=2, rgb=False, n=SMALL)
    data = load_split("breastmnist", "test", data_file=str(path), download=False)
    assert data.images.shape == (8, 1, 28, 28) and data.labels.tolist() == [0, 1] * 4
    assert data.class_names == tuple(INFO["breastmnist"]["label"][str(i)] for i in range(2))
    assert data.name == "breastmnist" and data.info["md5_official"] is False
    assert data.info["official_md5"] == INFO["breastmnist"]["MD5"]


def test_multiclass_rgb_channels_first(tmp_path):
    path = write_medmnist(tmp_path / "dermamnist.npz", k=7, rgb=True, n=SMALL)
    data = load_split("dermamnist", "train", data_file=str(path), download=False)
    raw = np.load(path)["train_images"]
    assert data.images.shape == (12, 3, 28, 28) and data.images.dtype == torch.float32
    assert torch.equal(data.images, torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255)
    assert data.labels.tolist() == [i % 7 for i in range(12)] and len(data.class_names) == 7


def test_root_file_names_and_sizes(tmp_path, monkeypatch):
    write_medmnist(tmp_path / "bloodmnist_64.npz", k=8, rgb=True, n=SMALL, size=64)
    data = load_split("bloodmnist", "val", size=64, data_root=str(tmp_path), download=False)
    assert data.images.shape == (8, 3, 64, 64) and data.info["official_md5"] == INFO["bloodmnist"]["MD5_64"]
    # BENCH_DATA_FILE names PneumoniaMNIST's file only; BENCH_DATA_ROOT serves every flag
    monkeypatch.setenv(pm.ENV_FILE, str(tmp_path / "pneumoniamnist.npz"))
    monkeypatch.setenv(pm.ENV_ROOT, str(tmp_path))
    assert pm.resolve_data_file(64, flag="bloodmnist") == tmp_path / "bloodmnist_64.npz"


@pytest.mark.parametrize(
    "override, drop, words",
    [
        ({}, ("val_labels",), ["val_labels", "missing keys"]),
        ({"train_images": np.zeros((12, 28, 28), np.uint8)}, (), ["train_images", "(12, 28, 28)", "RGB"]),
        ({"test_images": np.zeros((8, 28, 28, 4), np.uint8)}, (), ["test_images", "(8, 28, 28, 4)"]),
        ({"train_labels": np.full((12, 1), 7, np.uint8)}, (), ["train_labels", "[7]", "{0, ..., 6}", "dermamnist"]),
        ({"val_labels": np.zeros((8, 7), np.uint8)}, (), ["val_labels", "(8, 7)"]),
    ],
    ids=["missing-key", "grayscale-for-rgb", "four-channels", "label-out-of-range", "multi-label"],
)
def test_validation_errors_name_the_file_and_the_fix(tmp_path, override, drop, words):
    path = write_medmnist(tmp_path / "d.npz", k=7, rgb=True, n=SMALL, drop=drop, **override)
    msg = bench_error(load_split, "dermamnist", "train", data_file=str(path), download=False)
    assert str(path) in msg and ("; " in msg)  # problem; fix
    for word in words:
        assert word in msg


def test_wrong_size_and_missing_file(tmp_path):
    path = write_medmnist(tmp_path / "d.npz", k=7, rgb=True, n=SMALL)
    msg = bench_error(load_split, "dermamnist", "train", size=64, data_file=str(path))
    assert "28x28" in msg and "size=64" in msg and "dermamnist_64.npz" in msg
    assert "28, 64, 128, 224" in bench_error(load_split, "dermamnist", "train", size=32, data_file=str(path))
    msg = bench_error(load_split, "octmnist", "test", data_root=str(tmp_path), download=False)
    assert str(tmp_path / "octmnist.npz") in msg and INFO["octmnist"]["MD5"] in msg and "--data-file" in msg
    # a grayscale binary file is not silently read as a 4-class one or an RGB one
    grey = write_medmnist(tmp_path / "b.npz", k=2, rgb=False, n=SMALL)
    assert "RGB" in bench_error(load_split, "bloodmnist", "test", data_file=str(grey))


# ---------------------------------------------------------------- cells and metrics with K classes


def test_cells_for_k_classes():
    assert cell_names(2) == ("TP", "FP", "FN", "TN")
    assert cell_names(3) == ("c0_ok", "c0_wrong", "c1_ok", "c1_wrong", "c2_ok", "c2_wrong")
    assert confusion_cells([1, 1, 0, 0], [1, 0, 1, 0]) == ["TP", "FN", "FP", "TN"]
    assert confusion_cells([2, 2, 0, 1], [2, 0, 0, 2], 3) == ["c2_ok", "c2_wrong", "c0_ok", "c1_wrong"]
    assert ordered_cells(["TN"]) == ("TP", "FP", "FN", "TN")  # binary tables always list all four
    assert ordered_cells(["c10_ok", "c2_wrong", "c2_ok"]) == ("c2_ok", "c2_wrong", "c10_ok")
    moves = {a: {b: 0 for b in cell_names(3)} for a in cell_names(3)}
    moves["c1_wrong"]["c1_ok"] = 2
    assert move_cells(moves) == ("c1_ok", "c1_wrong")


def test_multiclass_metrics():
    labels = np.array([0, 1, 2, 2, 1, 0])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.2, 0.7], [0.6, 0.2, 0.2], [0.2, 0.5, 0.3], [0.5, 0.4, 0.1]]
    )
    m = classification_metrics(labels, probs)
    assert m["acc"] == pytest.approx(5 / 6) and m["recall"] == [1.0, 1.0, 0.5]
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [1, 0, 1]] and "sensitivity" not in m
    # macro one-vs-rest AUC, each class's AUC from the rank formula by hand
    by_class = []
    for k in range(3):
        pos, neg = probs[labels == k, k], probs[labels != k, k]
        by_class.append(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))
    assert m["auc"] == pytest.approx(np.mean(by_class))
    cmp = compare_classifiers(labels, m, m, probs.argmax(1), np.array([0, 1, 2, 2, 1, 1]), num_classes=3)
    assert cmp["images_changed_cell"] == 2 and cmp["cell_moves"]["c2_wrong"]["c2_ok"] == 1
    assert cmp["cell_moves"]["c0_ok"]["c0_wrong"] == 1 and cmp["mcnemar"]["a_wrong_b_right"] == 1


# ---------------------------------------------------------------- every explainer on RGB, K classes


FAST = {"nsamples": 8, "n_samples": 8, "max_evals": 64, "n_steps": 16}


@pytest.mark.parametrize("name", list_explainers())
def test_explainers_on_three_channels_and_four_classes(name):
    """Every registered explainer on a 3-channel, 4-class tiny model: the runner's checks (shape
    (B, 3, H, W), finite, model untouched) hold, the map differs across channels, and exact
    additive methods stay complete (shap.partition attributes whole pixels, spread over channels)."""
    torch.manual_seed(0)
    model = calibrated(build_model("tiny", in_channels=3, num_classes=4), channels=3)
    g = torch.Generator().manual_seed(1)
    inputs, background = torch.rand(3, 3, 28, 28, generator=g), torch.rand(6, 3, 28, 28, generator=g)
    targets = torch.tensor([0, 3, 2])
    params = {k: v for k, v in FAST.items() if k in get_explainer(name).params()}
    attr = run_explainer(name, model, inputs, targets, background=background, **params)
    assert attr.values.shape == inputs.shape and torch.isfinite(attr.values).all()
    if get_explainer(name).meta.get("per_pixel"):  # registered as one value per pixel (CAMs, superpixels, flat rule)
        assert torch.equal(attr.values[:, 0], attr.values[:, 1])
    elif name != "shap.partition":  # its Image masker hides a pixel's channels together: one value per pixel
        assert not torch.equal(attr.values[:, 0], attr.values[:, 1])
    if get_explainer(name).meta.get("additive") and name != "captum.integrated_gradients":
        assert (relative_completeness_gap(attr) <= 1e-4).all()


# ---------------------------------------------------------------- end to end


def _quick_lists() -> tuple[list[str], list[str]]:
    cfg = load_config(QUICK, [])
    return list(cfg.explain.names), list(cfg.metrics.names)


def test_end_to_end_rgb_multiclass(tmp_path):
    """``bench run`` on a 7-class RGB dermamnist-format file with the tiny model, every default
    explainer and metric, pre and post: cells per class, tables and figures, no failure."""
    explainers, metrics = _quick_lists()
    k = 7
    path = write_medmnist(tmp_path / "dermamnist.npz", k=k, rgb=True, n={"train": 140, "val": 35, "test": 35})
    overrides = [
        'name="rgb"',
        f'results_dir="{tmp_path / "results"}"',
        f'checkpoint_dir="{tmp_path / "ck"}"',
        'device="cpu"',
        'data.dataset="dermamnist"',
        f'data.options={{data_file = "{path}", download = false}}',
        "data.per_cell=1",
        "data.background_size=8",
        'models.names=["tiny"]',
        "train.epochs=3",
        "train.batch_size=32",
        "train.lr=0.01",
        "tune.epochs=1",
        'tune.unfreeze=["fc"]',
        "explain.shard_size=8",
        'explain.params={"captum.integrated_gradients" = {n_steps = 8}, "shap.gradient" = {nsamples = 8}, '
        '"shap.partition" = {max_evals = 64}}',
        'metrics.params={"deletion_auc" = {steps = 7}, "insertion_auc" = {steps = 7}}',
        "reliability.substrates=[]",
        "reliability.imputation=false",
        "reliability.bootstrap=50",
    ]
    cfg = load_config(QUICK, overrides)
    run_dir = runner.run(cfg, progress=False)

    scores = read_scores(run_dir / "scores.csv")
    assert set(scores.explainer) == set(explainers) and set(scores.metric) == set(metrics)
    assert set(scores.stage) == {"pre", "post"}
    failed = scores[scores.status == "error"]
    assert failed.empty, failed[["explainer", "metric", "message"]].drop_duplicates().to_string()
    assert set(scores.cell) <= set(cell_names(k)) and len(set(scores.cell)) >= 2
    pre = scores[scores.stage == "pre"].drop_duplicates("image")
    assert (pre.cell == [f"c{y}_{'ok' if y == p else 'wrong'}" for y, p in zip(pre.label, pre.pred)]).all()
    assert pre.groupby("cell").size().max() == 1  # per_cell = 1
    assert set(pre.label) == set(range(k))

    board = pd.read_csv(run_dir / "leaderboard.csv")
    assert len(board) == 2 * len(explainers) * len(metrics)
    assert set(zip(board.explainer, board.metric)) == {(e, m) for e in explainers for m in metrics}
    by_cell = pd.read_csv(run_dir / "prepost_by_cell.csv")
    assert list(by_cell.cell.unique()) == list(ordered_cells(pre.cell))
    assert len(by_cell) == len(explainers) * len(metrics) * pre.cell.nunique()
    assert (run_dir / "reliability.md").stat().st_size > 0 and (run_dir / "report.html").is_file()
    for name in explainers:
        assert (run_dir / "figures" / f"attributions_tiny_{name}.png").is_file(), name
    with np.load(run_dir / "attributions.npz") as npz:
        assert set(npz["cells|tiny|pre"].tolist()) <= set(cell_names(k))

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["data"]["dataset"] == "dermamnist"
    ckpt = next((tmp_path / "ck").glob("tiny-*px-*.pt"))
    side = read_sidecar(ckpt)
    assert side["model_kwargs"] == {"in_channels": 3, "num_classes": k, "image_size": 28}
    assert len(side["test"]["recall"]) == k and 0 <= side["test"]["auc"] <= 1
    models = json.loads((run_dir / "prepost_models.json").read_text())
    assert set(models["tiny"]["cell_moves"]) == set(cell_names(k))
