"""A planted marker in a base data set: the model-truth test of attribution metrics.

Zhou et al. 2022 ("Do feature attribution methods correctly attribute features?", AAAI) and Clark,
Oliveira, Wilming & Haufe 2026 ("Feature salience - not task-informativeness - drives machine
learning model explanations", arXiv 2602.09238) plant a feature whose use by the model can be
verified. ``marked`` stamps one into every split of a base data set (PneumoniaMNIST by default):

- ``marker``: ``"patch"`` (a solid square), ``"watermark"`` (a translucent ring, Clark et al.'s
  watermark) or ``"tag"`` (a letter L in a contrasting box, like the lead markers real chest X-rays
  carry); ``marker_size`` pixels wide; ``polarity`` ``"bright"`` (value 1) or ``"dark"`` (value 0);
  ``opacity`` the blending weight ``a`` of ``x' = (1 - a) x + a v`` (default: 1 for patch and tag,
  0.5 for the watermark); ``position`` ``"fixed"`` (top-left corner, 1 px in) or ``"random"``
  (uniform per image, seeded).
- ``condition`` for the train and val splits: ``"none"`` (no marker), ``"confound"`` (on
  ``rate_positive`` of class-1 images and ``rate_negative`` of class-0 images) or ``"noise"`` (on
  the same overall share of images, independent of the label).
- the test split, identical under every condition: ``test_n`` images (0 = all), half of each
  class where possible, the marker on ``test_rate`` of them chosen independently of the label.

Every image also gets its counterfactual (``ImageSplit.counterfactual``: the marker removed where
present, added at its drawn position where absent), from which the model's reliance on the marker
is measured by intervention; ``masks`` hold the marker's region on the images that carry it (all
False elsewhere), so the localisation metrics and ``mask_share`` score attribution inside it.
Every random choice comes from its own stream of ``(seed, split)``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import torch
from torch import Tensor

from bench.core.errors import BenchError
from bench.core.params import Range
from datasets.base import SPLITS, ImageSplit, load_split, register_dataset

VERSION = 1
MARKERS = ("patch", "watermark", "tag")
CONDITIONS = ("none", "confound", "noise")
DEFAULT_OPACITY = {"patch": 1.0, "watermark": 0.5, "tag": 1.0}
MIN_MARKER = 3


def _stream(seed: int, split: str, stream: str) -> torch.Generator:
    digest = hashlib.sha256(f"pneumobench.marked:{seed}:{split}:{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def glyph(marker: str, size: int, polarity: str) -> tuple[Tensor, Tensor]:
    """(alpha, value), each ``(size, size)``: where the marker covers (0..1) and the value it puts there.

    patch: every pixel at the polarity's value. watermark: a ring (pixels whose distance from the
    centre is within half a pixel of ``(size - 1) / 2 - 0.5``). tag: a box at the opposite value
    with a letter L at the polarity's value (stroke ``max(1, size // 4)``, one pixel in from the box).
    """
    v = 1.0 if polarity == "bright" else 0.0
    alpha = torch.ones(size, size)
    value = torch.full((size, size), v)
    if marker == "watermark":
        c = (size - 1) / 2
        yy, xx = torch.meshgrid(
            torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
        )
        r = ((yy - c) ** 2 + (xx - c) ** 2).sqrt()
        alpha = ((r - (c - 0.5)).abs() <= 0.5).float()
    elif marker == "tag":
        value = torch.full((size, size), 1.0 - v)
        t = max(1, size // 4)
        inner = slice(1, size - 1)
        letter = torch.zeros(size, size, dtype=torch.bool)
        letter[inner, 1 : 1 + t] = True  # the upright
        letter[size - 1 - t : size - 1, inner] = True  # the foot
        value[letter] = v
    return alpha, value


def stamp(
    images: Tensor, where: Tensor, rows: Tensor, cols: Tensor, alpha: Tensor, value: Tensor, opacity: float
) -> tuple[Tensor, Tensor]:
    """``images`` with the glyph blended in at ``(rows, cols)`` (top-left) where ``where`` is True,
    and the glyph's region ``(N, 1, H, W)`` bool at every image's position (whether stamped or not)."""
    out = images.clone()
    n, c, h, w = images.shape
    s = alpha.shape[0]
    region = torch.zeros(n, 1, h, w, dtype=torch.bool)
    a = (alpha * opacity).clamp(0, 1)
    for i in range(n):
        r, q = int(rows[i]), int(cols[i])
        region[i, 0, r : r + s, q : q + s] = alpha > 0
        if where[i]:
            patch = out[i, :, r : r + s, q : q + s]
            out[i, :, r : r + s, q : q + s] = (1 - a) * patch + a * value
    return out, region


def planted(
    labels: Tensor, split: str, condition: str, rate_positive: float, rate_negative: float, test_rate: float, seed: int
) -> Tensor:
    """Which images carry the marker (bool ``(N,)``): the condition's rates on train / val, the test
    rate (label-independent) on test."""
    n = len(labels)
    u = torch.rand(n, generator=_stream(seed, split, "planted"))
    if split == "test":
        return u < test_rate
    if condition == "none":
        return torch.zeros(n, dtype=torch.bool)
    pos = labels == 1
    if condition == "confound":
        return torch.where(pos, u < rate_positive, u < rate_negative)
    overall = (rate_positive * pos.sum() + rate_negative * (~pos).sum()).item() / max(n, 1)
    return u < overall


@register_dataset(
    "marked",
    in_channels=1,
    num_classes=2,
    has_masks=True,
    constraints={
        "marker_size": Range(MIN_MARKER),
        "opacity": Range(0, 1, low_open=True),
        "rate_positive": Range(0, 1),
        "rate_negative": Range(0, 1),
        "test_rate": Range(0, 1),
        "test_n": Range(0),
    },
)
def marked(
    split: str,
    *,
    base: str = "pneumoniamnist",
    base_options: dict | None = None,
    size: int = 28,
    marker: Literal["patch", "watermark", "tag"] = "patch",
    marker_size: int = 3,
    polarity: Literal["bright", "dark"] = "bright",
    opacity: float | None = None,
    position: Literal["fixed", "random"] = "fixed",
    condition: Literal["none", "confound", "noise"] = "confound",
    rate_positive: float = 0.9,
    rate_negative: float = 0.1,
    test_rate: float = 0.5,
    test_n: int = 0,
    seed: int = 0,
) -> ImageSplit:
    """One split of ``base`` (loaded with ``size`` and ``base_options``) with the marker planted
    (module docstring). ``info`` records every option, the base data's provenance and how many
    images carry the marker."""
    if split not in SPLITS:
        raise BenchError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if base == "marked":
        raise BenchError("marked: base must be another data set (e.g. pneumoniamnist or synthetic), not marked")
    options = dict(base_options or {})
    if not isinstance(base_options, (dict, type(None))):
        raise BenchError(f"marked: base_options must be a table of the base data set's options, got {base_options!r}")
    src = load_split(base, split, size=size, **options)
    n, _, h, w = src.images.shape
    if marker_size > min(h, w) - 2:
        raise BenchError(f"marked: marker_size {marker_size} does not fit {h}x{w} images; use at most {min(h, w) - 2}")
    if split == "test" and test_n and test_n < n:
        src = src.subset(_balanced(src.labels, test_n, seed))
        n = len(src)
    op = DEFAULT_OPACITY[marker] if opacity is None else float(opacity)
    alpha, value = glyph(marker, marker_size, polarity)
    on = planted(src.labels, split, condition, rate_positive, rate_negative, test_rate, seed)
    if position == "fixed":
        rows = cols = torch.ones(n, dtype=torch.long)
    else:
        g = _stream(seed, split, "position")
        rows = torch.randint(0, h - marker_size + 1, (n,), generator=g)
        cols = torch.randint(0, w - marker_size + 1, (n,), generator=g)
    with_marker, region = stamp(src.images, torch.ones(n, dtype=torch.bool), rows, cols, alpha, value, op)
    on4 = on.view(-1, 1, 1, 1)
    images = torch.where(on4, with_marker, src.images)
    counterfactual = torch.where(on4, src.images, with_marker)
    options_record: dict[str, Any] = {
        "base": base,
        "base_options": options,
        "size": size,
        "marker": marker,
        "marker_size": marker_size,
        "polarity": polarity,
        "opacity": op,
        "position": position,
        "condition": condition,
        "rate_positive": rate_positive,
        "rate_negative": rate_negative,
        "test_rate": test_rate,
        "test_n": test_n,
        "seed": seed,
        "version": VERSION,
    }
    base_info = {k: v for k, v in src.info.items() if k in ("source", "md5", "md5_official", "size", "seed")}
    return ImageSplit(
        images=images.contiguous(),
        labels=src.labels,
        name="marked",
        split=split,
        masks=region & on4,
        class_names=src.class_names,
        info={**options_record, "base_info": base_info, "n_marked": int(on.sum()), "n": n},
        counterfactual=counterfactual.contiguous(),
    )


def _balanced(labels: Tensor, n: int, seed: int) -> Tensor:
    """``n`` positions, half of each class where the class has enough images, the rest from the
    others (seeded), in index order."""
    g = _stream(seed, "test", "subset")
    classes = sorted(int(c) for c in labels.unique())
    chosen, left = [], []
    for i, c in enumerate(classes):
        want = n // len(classes) + (1 if i < n % len(classes) else 0)
        pool = torch.nonzero(labels == c).flatten()
        pool = pool[torch.randperm(len(pool), generator=g)]
        chosen.append(pool[:want])
        left.append(pool[want:])
    rest = torch.cat(left)
    chosen.append(rest[torch.randperm(len(rest), generator=g)][: n - sum(len(x) for x in chosen)])
    return torch.cat(chosen).sort().values
