"""Shared fixtures. Tests never use the network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from datasets import pneumoniamnist as pm

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist_reconstructed_unverified.npz"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def calibrated(
    model: str | torch.nn.Module,
    seed: int = 0,
    batches: int = 3,
    batch: int = 16,
    *,
    channels: int = 1,
    size: int = 28,
    normal: bool = False,
    momentum: float | None = None,
    head_scale: float | None = None,
) -> torch.nn.Module:
    """A random-weight model whose BatchNorm statistics come from a few random batches, in eval() mode.

    ``model``: a registered name, built after ``torch.manual_seed(seed)`` with ``channels`` input
    channels at ``size`` px; the calibration batches then come from the global RNG. Or a model
    instance (its weights already set), calibrated in place; its batches come from a
    ``torch.Generator`` seeded with ``seed`` and the global RNG is left alone.

    ``batches`` batches of ``batch`` images ``(batch, channels, size, size)``, uniform in [0, 1)
    (``normal=True``: standard normal). ``momentum=None`` makes the running statistics the
    cumulative average over the batches (they do not stay near their initial values); a float
    is the usual exponential average with that momentum. Each BatchNorm gets its own momentum
    back afterwards. ``head_scale`` multiplies the weight of the ``fc`` head: a sharper head,
    confident predictions.
    """
    from torch import nn

    if isinstance(model, str):
        from models import build_model

        torch.manual_seed(seed)
        model = build_model(model, in_channels=channels, image_size=size)
        generator = None
    else:
        generator = torch.Generator().manual_seed(seed)
    draw = torch.randn if normal else torch.rand
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = momentum
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(draw(batch, channels, size, size, generator=generator))
        if head_scale is not None:
            model.fc.weight.mul_(head_scale)
    for bn, m in zip(bns, saved):
        bn.momentum = m
    return model.eval()


@pytest.fixture
def linear():
    """A linear model f(x) = w . x + b on 28x28 images, where attribution methods have closed forms:
    (model, inputs (2, 1, 28, 28), targets (2,), background (4, 1, 28, 28), w of each target (2, 1, 28, 28))."""
    from torch import nn

    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2)).eval()
    g = torch.Generator().manual_seed(4)
    inputs, background = torch.rand(2, 1, 28, 28, generator=g), torch.rand(4, 1, 28, 28, generator=g)
    targets = torch.tensor([0, 1])
    w = net[1].weight.detach()[targets].view(2, 1, 28, 28)
    return net, inputs, targets, background, w


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny tensor workloads (use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): two threads spin-wait on a shared,
    busy 2-core machine and ran such tests ~50x slower (measured). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bench_error(fn, *args, **kwargs) -> str:
    """Run ``fn``, expect a BenchError, return its message after checking it is one line."""
    with pytest.raises(BenchError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def save_npz(
    path: Path, arrays: dict[str, np.ndarray], *, drop: tuple[str, ...] = (), compressed: bool = False
) -> Path:
    """Write a MedMNIST-format ``.npz`` of ``arrays`` less the keys in ``drop`` (a test's bad file)."""
    arrays = {k: v for k, v in arrays.items() if k not in drop}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # a file handle keeps the exact name (np.savez appends .npz)
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return path


@pytest.fixture
def clean_data_env(monkeypatch):
    """The developer's own BENCH_DATA_* settings must not leak into the tests; the loaders' caches
    start empty (use it with ``pytestmark = pytest.mark.usefixtures("clean_data_env")``)."""
    monkeypatch.delenv(pm.ENV_FILE, raising=False)
    monkeypatch.delenv(pm.ENV_ROOT, raising=False)
    pm._read_npz.cache_clear()
    pm._md5.cache_clear()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt at a download fails loudly instead of hanging."""
    import socket

    def guard(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)


@pytest.fixture(scope="session")
def shared_data_file() -> Path:
    """The offline PneumoniaMNIST file beside the repo; the test is skipped without it."""
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data file not present: {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def synthetic_data():
    """(train, val, test) synthetic splits with ground-truth masks: small, seeded, learnable."""
    from datasets import load_split

    return [load_split("synthetic", s, n=n, seed=3) for s, n in (("train", 256), ("val", 64), ("test", 64))]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, synthetic_data):
    """A tiny model trained on the synthetic data: (checkpoint path, sidecar)."""
    from models.recipes import TrainConfig
    from models.training import train_model

    out = tmp_path_factory.mktemp("ck") / "tiny.pt"
    side = train_model(
        TrainConfig(model="tiny", epochs=10, batch_size=32, lr=1e-2),
        *synthetic_data,
        out=out,
        device="cpu",
        progress=False,
    )
    return out, side
