"""Shared fixtures. Tests never use the network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "medmnist" / "pneumoniamnist_reconstructed_unverified.npz"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def calibrated(name: str, seed: int = 0, batches: int = 3, batch: int = 16):
    """A random-weight registered model (28 px) whose BatchNorm statistics are the average over a
    few random batches, in eval() mode."""
    from torch import nn

    from models import build_model

    torch.manual_seed(seed)
    model = build_model(name, image_size=28)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative average: the stats do not stay near their initial values
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(batch, 1, 28, 28))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


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
    from models import training as T

    out = tmp_path_factory.mktemp("ck") / "tiny.pt"
    side = T.train_model(T.TrainConfig(model="tiny", epochs=10, batch_size=32, lr=1e-2), *synthetic_data, out=out,
                         device="cpu", progress=False)
    return out, side
