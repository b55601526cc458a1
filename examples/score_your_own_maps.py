"""Score your own maps: Grad-CAMs from pytorch-grad-cam, computed outside pneumobench, scored by it.

    python examples/score_your_own_maps.py                 # PneumoniaMNIST (BENCH_DATA_FILE or medmnist)
    python examples/score_your_own_maps.py --synthetic     # no download: pneumobench's synthetic images

About a minute on two CPU cores: a tiny CNN is trained for a few hundred steps by a plain PyTorch
loop, pytorch-grad-cam computes Grad-CAM and Grad-CAM++ maps of its predicted class on 24 test
images, and ``bench.evaluate`` scores them next to the ``random`` and ``edge`` controls with
deletion, insertion and the drop rate, and writes the reliability card. docs/own-maps.md explains
what the numbers mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import bench
from datasets import load_split
from models import build_model

METRICS = ["deletion_auc", "insertion_auc", "drop_rate"]


def train_tiny(images: torch.Tensor, labels: torch.Tensor, steps: int = 300, seed: int = 0) -> nn.Module:
    """Your model, trained your way: pneumobench's tiny CNN, Adam, batches of 64."""
    torch.manual_seed(seed)
    model = build_model("tiny", in_channels=images.shape[1], image_size=images.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def grad_cams(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> dict[str, np.ndarray]:
    """Your maps, computed your way: ``(N, H, W)`` arrays from pytorch-grad-cam on the last block."""
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    out = {}
    for name, method in (("my-gradcam", GradCAM), ("my-gradcam++", GradCAMPlusPlus)):
        with method(model=model, target_layers=[model.layer2]) as cam:
            out[name] = cam(input_tensor=images, targets=targets)
    return out


def your_model_and_maps(*, synthetic: bool = False, n_images: int = 24, steps: int = 300, seed: int = 0):
    """(model, images, labels, predicted classes, {name: (N, H, W) maps}): what you bring, made here."""
    options = {"n": 400, "seed": seed} if synthetic else {"size": 28}
    dataset = "synthetic" if synthetic else "pneumoniamnist"
    train, test = load_split(dataset, "train", **options), load_split(dataset, "test", **options)
    model = train_tiny(train.images, train.labels, steps=steps, seed=seed)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n_images].sort().values
    images, labels = test.images[pick], test.labels[pick]
    with torch.no_grad():
        predicted = model(images).argmax(1)  # the class each map explains
    return model, images, labels, predicted, grad_cams(model, images, predicted)


def score(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    maps: dict[str, np.ndarray],
    *,
    seed: int = 0,
    overrides: tuple[str, ...] = (),
    verbose: bool = True,
) -> bench.Result:
    """Your maps scored: they enter as explainers named by you, beside the two controls (the card's
    chance level), explaining the classes they were computed for."""
    return bench.evaluate(
        model,
        images,
        targets=predicted,
        labels=labels,
        attributions=maps,
        metrics=METRICS,
        seed=seed,
        device="cpu",
        model_name="tiny-cnn",
        overrides=list(overrides),
        verbose=verbose,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="pneumobench's synthetic images (no data file)")
    parser.add_argument("--out", default="results/own-maps", help="where to save the run (default: %(default)s)")
    args = parser.parse_args()
    result = score(*your_model_and_maps(synthetic=args.synthetic))
    print(result.to_markdown())
    print(f"saved to {result.save(Path(args.out))}: report.html, leaderboard.md, reliability.md, scores.csv")


if __name__ == "__main__":
    main()
