"""Which target layer gives the most faithful CAM maps on the 28 px ResNets (the CAM family's default).

A measurement, not part of the package: the "CAM target layer" table in docs/explainers.md comes
from this script. At 28 px the stages of resnet18 output 28x28 (layer1), 14x14 (layer2), 7x7
(layer3) and 4x4 (layer4) maps; a CAM of the last stage is a 4x4 map upsampled 7x. For every CAM
adapter and every stage, the maps of ``--images`` test images (a seeded sample, explained for the
model's predicted class) are scored with the benchmark's own faithfulness metrics:

* ``deletion_auc`` (lower is better), towards zero (its default substrate);
* ``insertion_auc`` (higher is better), from the blurred image (its default substrate);

both with ``--steps`` curve steps (their default 49; fewer to fit a shared 2-core machine).

Each cell is the mean over images with its standard error; ``vs next`` is the paired difference
between the best layer and the runner-up of that method and metric (mean +- 1.96 standard errors of
the per-image differences), so a default is only claimed where the pair separates.

Run (a checkpoint of ``python -m bench train``; the numbers in the docs are from the one named there)::

    python docs/experiments/cam_layer.py --checkpoint results/checkpoints/resnet18-....pt --images 48 \
        --steps 24 --layers layer2,layer3,layer4 --extra gradcam.grad_cam=layer1
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench.metrics import deletion_auc, insertion_auc
from datasets import load_split
from explainers import run_explainer
from models.checkpoints import load_checkpoint

METHODS = (
    "gradcam.grad_cam",
    "gradcam.grad_cam_plusplus",
    "gradcam.hires_cam",
    "gradcam.layer_cam",
    "gradcam.score_cam",
)
LAYERS = ("layer1", "layer2", "layer3", "layer4")
SCORES = {  # name: (metric, substrate, higher is better): each metric at its default substrate
    "deletion (zero)": (deletion_auc, "zero", False),
    "insertion (blur)": (insertion_auc, "blur", True),
}


def scores_of(model, x, t, attr, steps: int) -> dict[str, torch.Tensor]:
    return {k: fn(model, x, t, attr, substrate=sub, steps=steps).scores.double() for k, (fn, sub, _) in SCORES.items()}


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    return v.mean().item(), (v.std() / math.sqrt(v.numel())).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--layers", default=",".join(LAYERS), help="the layers measured for every method")
    ap.add_argument("--extra", default="", help="more layers for some methods: 'gradcam.grad_cam=layer1;...'")
    ap.add_argument("--steps", type=int, default=49, help="curve steps of both metrics (49: their default)")
    ap.add_argument("--save", default=None, help="per-image scores, saved after every cell and resumed from")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, _ = load_checkpoint(args.checkpoint)
    test = load_split("pneumoniamnist", "test")
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.images]
    x = test.images[idx]
    with torch.no_grad():
        t = model(x).argmax(1)
    bg = x[:1]  # unused by the CAM adapters
    extra = dict(item.split("=") for item in args.extra.split(";") if item)
    results: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    if args.save and Path(args.save).is_file():
        results = torch.load(args.save, weights_only=True)
    for method in args.methods.split(","):
        wanted = set(args.layers.split(",")) | set(extra.get(method, "").split(","))
        for layer in [la for la in LAYERS if la in wanted and (method, la) not in results]:
            t0 = time.perf_counter()
            attr = run_explainer(method, model, x, t, background=bg, layer=layer)
            results[method, layer] = scores_of(model, x, t, attr, args.steps)
            cells = ", ".join(
                f"{k} {mean_se(v)[0]:.4f} ({mean_se(v)[1]:.4f})" for k, v in results[method, layer].items()
            )
            print(f"# {method} {layer}: {cells}; {time.perf_counter() - t0:.1f} s", flush=True)
            if args.save:
                torch.save(results, args.save)
    rnd = scores_of(model, x, t, run_explainer("random", model, x, t, background=bg), args.steps)

    print(
        f"\n{args.checkpoint}: {args.images} test images (seed 0), predicted class, {args.steps} steps; "
        f"mean (standard error)\n"
    )
    print("| method | metric | " + " | ".join(LAYERS) + " | best | best - next (95 % CI) |")
    print("|---|---|" + "---:|" * len(LAYERS) + "---|---|")
    for method in args.methods.split(","):
        done = [la for la in LAYERS if (method, la) in results]
        for key, (_, _, higher) in SCORES.items():
            cells = {layer: mean_se(results[method, layer][key]) for layer in done}
            order = sorted(done, key=lambda la: cells[la][0], reverse=higher)
            diff = results[method, order[0]][key] - results[method, order[1]][key]
            m, se = mean_se(diff)
            row = " | ".join(f"{cells[la][0]:.3f} ({cells[la][1]:.3f})" if la in cells else "-" for la in LAYERS)
            print(
                f"| {method} | {key} | {row} | {order[0]} | {m:+.3f} [{m - 1.96 * se:+.3f}, {m + 1.96 * se:+.3f}] "
                f"vs {order[1]} |"
            )
    print("\nrandom control: " + ", ".join(f"{k} {mean_se(v)[0]:.3f} ({mean_se(v)[1]:.3f})" for k, v in rnd.items()))
    sidecar = Path(args.checkpoint + ".json")
    if sidecar.is_file():
        test_scores = json.loads(sidecar.read_text())["test"]
        print(f"model: test ACC {test_scores['acc']:.3f}, AUC {test_scores['auc']:.3f} (its sidecar)")


if __name__ == "__main__":
    main()
