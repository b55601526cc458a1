"""Dataset loaders: registry contract, PneumoniaMNIST file resolution/validation, synthetic generator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.core.io import file_md5
from datasets import DATASETS, SPLITS, ImageSplit, load_split
from datasets import medmnist2d, pneumoniamnist as pm
from datasets.synthetic import synthetic
from tests.conftest import bench_error, save_npz

SHARED_MD5 = "57c53b2150674bf50e93e69b793c5728"
SHARED_COUNTS = {"train": (1214, 3494), "val": (135, 389), "test": (234, 390)}
TMP_N = {"train": 10, "val": 6, "test": 8}

pytestmark = pytest.mark.usefixtures("one_thread", "clean_data_env")  # small tensor ops: see tests/conftest.py


def write_npz(
    path: Path,
    *,
    size: int = 28,
    n: dict[str, int] | None = None,
    seed: int = 0,
    compressed: bool = False,
    drop: tuple[str, ...] = (),
    **override: np.ndarray,
) -> Path:
    """A small MedMNIST-like file: ``{split}_images`` (N, size, size) uint8, ``{split}_labels`` (N, 1) uint8."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for s, k in (n or TMP_N).items():
        arrays[f"{s}_images"] = rng.integers(0, 256, (k, size, size), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(k) % 2).astype(np.uint8).reshape(k, 1)
    arrays.update(override)
    return save_npz(path, arrays, drop=drop, compressed=compressed)


def _fail_download(*args, **kwargs):
    raise AssertionError("no download expected here")


# ---------------------------------------------------------------- registry contract


def _small_options(name: str, tmp_path: Path) -> dict:
    """Options that make a registered dataset small and offline; a new dataset must add its own."""
    if name == "pneumoniamnist":
        return {"data_file": write_npz(tmp_path / "small.npz"), "download": False}
    if name == "synthetic":
        return {"n": 24, "size": 20}
    if name == "marked":  # a planted marker in the synthetic set
        return {"base": "synthetic", "base_options": {"n": 24}, "size": 20}
    if name in medmnist2d.FLAGS:  # a file in that flag's format: its channels, its classes
        meta, rng = DATASETS.get(name).meta, np.random.default_rng(0)
        shape = (28, 28, 3) if meta["in_channels"] == 3 else (28, 28)
        arrays = {f"{s}_images": rng.integers(0, 256, (k, *shape), dtype=np.uint8) for s, k in TMP_N.items()}
        arrays |= {f"{s}_labels": (np.arange(k) % meta["num_classes"]).reshape(k, 1) for s, k in TMP_N.items()}
        return {"data_file": write_npz(tmp_path / f"{name}.npz", **arrays), "download": False}
    raise AssertionError(f"add offline test options for the new dataset {name!r}")


def test_both_loaders_registered():
    assert {"pneumoniamnist", "synthetic"} <= set(DATASETS.names())
    assert DATASETS.get("pneumoniamnist").meta["sizes"] == (28, 64, 128, 224)
    assert DATASETS.get("synthetic").meta["has_masks"] is True


@pytest.mark.parametrize("name", DATASETS.names())
@pytest.mark.parametrize("split", SPLITS)
def test_contract(name, split, tmp_path):
    data = load_split(name, split, **_small_options(name, tmp_path))
    meta = DATASETS.get(name).meta
    n = len(data)
    assert isinstance(data, ImageSplit) and data.name == name and data.split == split and n > 0
    assert data.images.dtype == torch.float32 and data.images.shape[:2] == (n, meta["in_channels"])
    assert data.images.shape[2] == data.images.shape[3]
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.labels.dtype == torch.int64 and data.labels.shape == (n,)
    assert set(data.labels.tolist()) <= set(range(meta["num_classes"]))
    assert len(data.class_names) == meta["num_classes"]
    assert (data.masks is not None) == meta["has_masks"]
    if data.masks is not None:
        assert data.masks.dtype == torch.bool and data.masks.shape == (n, 1, *data.images.shape[2:])
    json.dumps(data.info)  # recorded in manifests as is
    sub = data.subset([0, n - 1])
    assert len(sub) == 2 and torch.equal(sub.images[1], data.images[-1])
    if data.counterfactual is not None:  # the same images with a planted feature toggled
        assert data.counterfactual.shape == data.images.shape and not torch.equal(data.counterfactual, data.images)
        assert torch.equal(sub.counterfactual[1], data.counterfactual[-1])


def test_load_split_bad_split_lists_splits():
    msg = bench_error(load_split, "synthetic", "training")
    assert "training" in msg and "train, val, test" in msg
    assert "train, val, test" in bench_error(synthetic, "dev")
    assert "train, val, test" in bench_error(pm.pneumoniamnist, "dev")


def test_load_split_unknown_dataset_lists_known():
    msg = bench_error(load_split, "chestmnist", "train")
    assert "chestmnist" in msg and "pneumoniamnist" in msg and "synthetic" in msg


# ---------------------------------------------------------------- the shared real file


@pytest.mark.realdata
def test_shared_file(shared_data_file):
    for split, (neg, pos) in SHARED_COUNTS.items():
        data = load_split("pneumoniamnist", split, data_file=shared_data_file, download=False)
        n = neg + pos
        assert data.images.shape == (n, 1, 28, 28) and data.images.dtype == torch.float32
        assert 0.0 <= data.images.min() and data.images.max() <= 1.0 and data.images.max() > 0.9
        assert data.labels.dtype == torch.int64 and data.labels.bincount().tolist() == [neg, pos]
        assert data.masks is None and data.class_names == ("normal", "pneumonia")
        # uint8 / 255 exactly
        assert torch.equal((data.images * 255).round(), data.images * 255)
        info = data.info
        assert info["md5"] == SHARED_MD5 and info["md5_official"] is False
        assert info["official_md5"] == "28209eda62fecd6e6a2d98b1501bb15f"
        assert info["source"] == str(shared_data_file) and info["size"] == 28 and info["n"] == n


@pytest.mark.realdata
def test_shared_file_through_env(shared_data_file, monkeypatch, tmp_path):
    monkeypatch.setenv(pm.ENV_FILE, str(shared_data_file))
    monkeypatch.setenv(pm.ENV_ROOT, str(tmp_path))  # the file variable beats the root variable
    data = load_split("pneumoniamnist", "test", download=False)
    assert len(data) == 624 and data.info["md5"] == SHARED_MD5
    assert data.info["source_from"] == pm.ENV_FILE


# ---------------------------------------------------------------- where the file comes from


def test_file_names_and_default_root():
    import medmnist.info

    assert pm.file_name(28) == "pneumoniamnist.npz" and pm.file_name(224) == "pneumoniamnist_224.npz"
    assert pm.default_data_root() == Path(medmnist.info.DEFAULT_ROOT)
    assert pm.resolve_data_file(64) == Path(medmnist.info.DEFAULT_ROOT) / "pneumoniamnist_64.npz"
    assert pm.official_md5(28) == medmnist.info.INFO["pneumoniamnist"]["MD5"]
    assert pm.official_md5(64) == "8f4eceb4ccffa70c672198ea285246c6"


def test_resolution_priority(tmp_path, monkeypatch):
    arg_file = write_npz(tmp_path / "arg.npz", n={"train": 3, "val": 1, "test": 1})
    env_file = write_npz(tmp_path / "env.npz", n={"train": 4, "val": 1, "test": 1})
    arg_root = tmp_path / "arg_root"
    env_root = tmp_path / "env_root"
    write_npz(arg_root / "pneumoniamnist.npz", n={"train": 5, "val": 1, "test": 1})
    write_npz(env_root / "pneumoniamnist.npz", n={"train": 6, "val": 1, "test": 1})
    monkeypatch.setenv(pm.ENV_FILE, str(env_file))
    monkeypatch.setenv(pm.ENV_ROOT, str(env_root))

    def n_train(**kw) -> int:
        return len(pm.pneumoniamnist("train", download=False, **kw))

    assert pm.resolve_data_file(28, arg_file, arg_root) == arg_file
    assert n_train(data_file=arg_file, data_root=arg_root) == 3
    # an explicit root (a command-line flag) beats the environment
    assert pm.resolve_data_file(28, None, arg_root) == arg_root / "pneumoniamnist.npz"
    assert n_train(data_root=arg_root) == 5
    assert pm.resolve_data_file(28) == env_file
    assert n_train() == 4
    monkeypatch.delenv(pm.ENV_FILE)
    assert pm.resolve_data_file(28) == env_root / "pneumoniamnist.npz"
    assert n_train() == 6
    assert pm.resolve_data_file(64) == env_root / "pneumoniamnist_64.npz"
    monkeypatch.delenv(pm.ENV_ROOT)
    assert pm.resolve_data_file(28) == pm.default_data_root() / "pneumoniamnist.npz"


def test_missing_file_download_disabled(tmp_path, monkeypatch):
    monkeypatch.setattr("medmnist.PneumoniaMNIST.download", _fail_download)
    root = tmp_path / "no" / "such" / "root"
    msg = bench_error(pm.pneumoniamnist, "train", data_root=root, download=False)
    assert str(root / "pneumoniamnist.npz") in msg and "BENCH_DATA_FILE" in msg and "--data-file" in msg
    assert not root.exists()


def test_missing_explicit_file_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr("medmnist.PneumoniaMNIST.download", _fail_download)
    path = tmp_path / "typo.npz"
    assert str(path) in bench_error(pm.pneumoniamnist, "train", data_file=path)
    monkeypatch.setenv(pm.ENV_FILE, str(path))
    msg = bench_error(pm.pneumoniamnist, "train")
    assert str(path) in msg and pm.ENV_FILE in msg


def test_download_failure_without_network(tmp_path):
    """The real medmnist -> torchvision download path, stopped by the no-network fixture."""
    root = tmp_path / "root"
    msg = bench_error(pm.pneumoniamnist, "val", data_root=root, download=True)
    assert str(root / "pneumoniamnist.npz") in msg and "download failed" in msg
    assert "BENCH_DATA_FILE" in msg and "zenodo" in msg
    assert list(root.iterdir()) == []  # no partial file, no temporary directory left behind


def test_download_failure_patched(tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("Automatic download failed!\n  multi\n  line")

    monkeypatch.setattr("medmnist.PneumoniaMNIST.download", boom)
    msg = bench_error(pm.pneumoniamnist, "test", size=64, data_root=tmp_path, download=True)
    assert str(tmp_path / "pneumoniamnist_64.npz") in msg and "8f4eceb4ccffa70c672198ea285246c6" in msg


def test_download_success_is_moved_into_place(tmp_path, monkeypatch):
    def fake_download(self):  # what medmnist does: <root>/<flag><size_flag>.npz
        write_npz(Path(self.root) / f"{self.flag}{self.size_flag}.npz", n={"train": 7, "val": 2, "test": 3})

    monkeypatch.setattr("medmnist.PneumoniaMNIST.download", fake_download)
    data = pm.pneumoniamnist("test", data_root=tmp_path, download=True)
    assert len(data) == 3 and data.info["source"] == str(tmp_path / "pneumoniamnist.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pneumoniamnist.npz"]


# ---------------------------------------------------------------- validation of the file


def test_md5_and_official_flag(tmp_path, monkeypatch):
    import medmnist

    path = write_npz(tmp_path / "f.npz")
    data = pm.pneumoniamnist("train", data_file=path)
    assert data.info["md5"] == file_md5(path) and data.info["md5_official"] is False
    pm._md5.cache_clear()
    monkeypatch.setitem(medmnist.INFO["pneumoniamnist"], "MD5", file_md5(path))
    data = pm.pneumoniamnist("train", data_file=path)
    assert data.info["md5_official"] is True and data.info["official_md5"] == file_md5(path)


def test_values_and_flat_labels(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    path = write_npz(tmp_path / "f.npz", val_images=images, val_labels=np.array([1, 0, 1], dtype=np.int64))
    data = pm.pneumoniamnist("val", data_file=path)
    assert torch.equal(data.images, torch.from_numpy(images).float().unsqueeze(1) / 255)
    assert data.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize("size", [64, 128, 224])
def test_larger_sizes(tmp_path, size):
    path = write_npz(tmp_path / f"pneumoniamnist_{size}.npz", size=size, n={"train": 2, "val": 1, "test": 1})
    data = pm.pneumoniamnist("train", size=size, data_root=tmp_path, download=False)
    assert data.images.shape == (2, 1, size, size) and data.info["size"] == size
    assert data.info["official_md5"] == pm.official_md5(size)
    assert str(path) == data.info["source"]


def test_reads_file_once_and_notices_replacement(tmp_path, monkeypatch):
    path = write_npz(tmp_path / "f.npz")
    calls = {"load": 0, "md5": 0}
    real_load, real_md5 = np.load, pm.file_md5

    def load(*a, **k):
        calls["load"] += 1
        return real_load(*a, **k)

    def md5(*a, **k):
        calls["md5"] += 1
        return real_md5(*a, **k)

    monkeypatch.setattr(pm.np, "load", load)
    monkeypatch.setattr(pm, "file_md5", md5)
    sizes = [len(pm.pneumoniamnist(s, data_file=path)) for s in SPLITS]
    assert sizes == [TMP_N[s] for s in SPLITS] and calls == {"load": 1, "md5": 1}
    write_npz(path, n={"train": 2, "val": 2, "test": 2})
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert len(pm.pneumoniamnist("train", data_file=path)) == 2 and calls == {"load": 2, "md5": 2}


def test_bad_size(tmp_path):
    msg = bench_error(pm.pneumoniamnist, "train", size=32, data_file=write_npz(tmp_path / "f.npz"))
    assert "32" in msg and "28, 64, 128, 224" in msg
    assert "28, 64, 128, 224" in bench_error(pm.resolve_data_file, 100)


def test_wrong_size_requested(tmp_path):
    path = write_npz(tmp_path / "f.npz")
    msg = bench_error(pm.pneumoniamnist, "train", size=64, data_file=path)
    assert str(path) in msg and "28x28" in msg and "size=64" in msg and "pneumoniamnist_64.npz" in msg


def test_truncated_file(tmp_path):
    good = write_npz(tmp_path / "good.npz").read_bytes()
    path = tmp_path / "truncated.npz"
    path.write_bytes(good[: len(good) // 2])
    msg = bench_error(pm.pneumoniamnist, "train", data_file=path)
    assert str(path) in msg and "truncated or corrupt" in msg and "replace" in msg


def test_corrupt_member(tmp_path):
    """A valid zip directory whose compressed data is damaged fails on read, not later."""
    path = write_npz(tmp_path / "f.npz", compressed=True, n={"train": 40, "val": 2, "test": 2})
    raw = bytearray(path.read_bytes())
    start = raw.index(b"train_images.npy") + 200
    raw[start : start + 500] = bytes(500)
    path.write_bytes(bytes(raw))
    msg = bench_error(pm.pneumoniamnist, "test", data_file=path)
    assert str(path) in msg and "corrupt" in msg


@pytest.mark.parametrize("content", [b"not a numpy file at all\n" * 10, b""])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "notes.npz"
    path.write_bytes(content)
    msg = bench_error(pm.pneumoniamnist, "train", data_file=path)
    assert str(path) in msg and "npz" in msg


def test_single_npy_array(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((2, 28, 28), np.uint8))
    msg = bench_error(pm.pneumoniamnist, "train", data_file=path)
    assert str(path) in msg and ".npy" in msg


def test_directory_instead_of_file(tmp_path):
    assert str(tmp_path) in bench_error(pm.pneumoniamnist, "train", data_file=tmp_path)


def test_missing_keys(tmp_path):
    path = write_npz(tmp_path / "f.npz", drop=("val_labels", "test_images"))
    msg = bench_error(pm.pneumoniamnist, "train", data_file=path)
    assert str(path) in msg and "val_labels" in msg and "test_images" in msg


@pytest.mark.parametrize(
    "override, words",
    [
        ({"train_images": np.zeros((10, 28, 28), np.float32)}, ["train_images", "float32", "uint8"]),
        ({"val_images": np.zeros((6, 28, 28, 3), np.uint8)}, ["val_images", "(6, 28, 28, 3)"]),
        ({"val_images": np.zeros((6, 28, 28, 1), np.uint8)}, ["val_images", "(6, 28, 28, 1)"]),
        ({"test_images": np.zeros((8, 784), np.uint8)}, ["test_images", "(8, 784)"]),
        ({"test_images": np.zeros((8, 28, 27), np.uint8)}, ["test_images", "28x27"]),
        ({"train_labels": np.full((10, 1), 2, np.uint8)}, ["train_labels", "[2]", "{0, 1}"]),
        ({"train_labels": -np.ones((10,), np.int64)}, ["train_labels", "[-1]"]),
        ({"val_labels": np.zeros((6, 2), np.uint8)}, ["val_labels", "(6, 2)"]),
        ({"val_labels": np.zeros((6, 1), np.float32)}, ["val_labels", "float32"]),
        ({"test_labels": np.zeros((7, 1), np.uint8)}, ["8", "7", "test_labels"]),
    ],
    ids=[
        "float-images",
        "rgb",
        "channel-last",
        "flat",
        "non-square",
        "label-2",
        "label-neg",
        "multilabel",
        "float-labels",
        "count-mismatch",
    ],
)
def test_invalid_contents(tmp_path, override, words):
    path = write_npz(tmp_path / "pneumo.npz", **override)
    msg = bench_error(pm.pneumoniamnist, "train", data_file=path)  # any split: the whole file is checked
    assert str(path) in msg
    for word in words:
        assert word in msg


# ---------------------------------------------------------------- synthetic


def _same(a: ImageSplit, b: ImageSplit) -> bool:
    return torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)


def test_synthetic_deterministic_and_seeded():
    a, b = synthetic("train", n=64), synthetic("train", n=64)
    assert _same(a, b)
    assert a.info == {"seed": 0, "n": 64, "size": 28, "positive_fraction": 0.5, "version": 1}
    assert not torch.equal(a.images, synthetic("train", n=64, seed=1).images)
    val, test = synthetic("val", n=64), synthetic("test", n=64)
    assert not torch.equal(a.images, val.images) and not torch.equal(val.images, test.images)
    # the first k samples do not depend on n
    assert _same(a, synthetic("train", n=100).subset(range(64)))


def test_synthetic_default_sizes_and_options():
    assert [len(synthetic(s)) for s in SPLITS] == [512, 128, 128]
    for size in (16, 45, 64):
        data = synthetic("val", n=8, size=size)
        assert data.images.shape == (8, 1, size, size) and data.masks.shape == (8, 1, size, size)
    assert "16" in bench_error(synthetic, "train", size=15)
    assert "positive_fraction" in bench_error(synthetic, "train", positive_fraction=1.5)
    assert "n" in bench_error(synthetic, "train", n=0)


@pytest.mark.parametrize("size", [16, 28, 64])
def test_synthetic_masks(size):
    data = synthetic("train", n=200, size=size)
    area = data.masks.sum((1, 2, 3))
    pos = data.labels == 1
    assert (area[~pos] == 0).all() and (area[pos] > 0).all()
    border = data.masks.clone()
    border[..., 1:-1, 1:-1] = False
    assert not border.any()  # the opacity lies inside the image, away from the edges
    assert area[pos].float().mean() < 0.1 * size * size


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_synthetic_class_balance(fraction):
    labels = synthetic("train", positive_fraction=fraction).labels
    assert abs(labels.float().mean().item() - fraction) < 0.05


def test_synthetic_opacity_is_inside_mask():
    """Same seed, all positive vs all negative: identical scenes except the opacity, so the
    difference is the blob alone; it must peak inside the mask and put most of its mass there."""
    pos = synthetic("test", n=100, positive_fraction=1.0)
    neg = synthetic("test", n=100, positive_fraction=0.0)
    diff = pos.images - neg.images
    assert diff.min() >= 0 and (diff.sum((1, 2, 3)) > 0).all()
    inside = (diff * pos.masks).sum((1, 2, 3)) / diff.sum((1, 2, 3))
    assert inside.min() > 0.5 and inside.mean() > 0.7
    assert torch.equal(diff.amax((1, 2, 3)), (diff * pos.masks).amax((1, 2, 3)))
    # and within one image: brighter inside the mask than in its mirror image across the spine
    mirrored = pos.masks.flip(-1)
    mean_in = (pos.images * pos.masks).sum((1, 2, 3)) / pos.masks.sum((1, 2, 3))
    mean_mirror = (pos.images * mirrored).sum((1, 2, 3)) / mirrored.sum((1, 2, 3))
    assert (mean_in > mean_mirror).float().mean() > 0.95


def test_synthetic_not_given_away_by_brightness():
    data = synthetic("train", n=1000)
    mean = data.images.mean((1, 2, 3))
    # AUC of the mean intensity as a score (Mann-Whitney)
    pos, neg = mean[data.labels == 1], mean[data.labels == 0]
    auc = (pos[:, None] > neg[None, :]).float().mean().item()
    assert 0.35 < auc < 0.65


def test_synthetic_learnable_by_small_cnn():
    train, test = synthetic("train"), synthetic("test")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        for idx in torch.randperm(len(train)).split(32):
            loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(test.images).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.9
