"""Plug-ins beyond explainers: the metric guide's executed example, metrics / models / datasets
arriving through their entry-point groups, broken plug-ins, and the example plug-in package.

Every test runs against copies of the registries (``isolated`` fixture): whatever a test
registers disappears with it, and the modules it imported are dropped from ``sys.modules``.
Fake installed distributions are ``*.dist-info`` folders in ``tmp_path`` on ``sys.path``
(as in tests/test_explainers.py), so nothing is pip-installed.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from bench.core.errors import BenchError
from bench.core.registry import UnknownNameError
from bench.metrics import METRICS, compute_metric, metric_params
from bench.perf.floor import metric_passes_per_image, passes_per_image
from datasets import DATASETS, dataset_options, load_split
from explainers import EXPLAINERS, Attribution, run_explainer
from models import MODELS, build_model

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "pneumobench_example_plugin"
REGISTRIES = {
    "bench.explainers": EXPLAINERS,
    "bench.metrics": METRICS,
    "bench.models": MODELS,
    "bench.datasets": DATASETS,
}
TEST_MODULES = ("fake_bench_", "broken_bench_", "pneumobench_example_plugin")


@pytest.fixture
def isolated(monkeypatch):
    """Registries as copies (restored afterwards); modules the test imports are dropped afterwards."""
    for reg in REGISTRIES.values():
        reg.names()  # real entry points loaded first, so the copy starts complete
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
        monkeypatch.setattr(reg, "_broken", list(reg._broken))

    def drop_modules() -> None:
        for name in [m for m in sys.modules if m.startswith(TEST_MODULES)]:
            del sys.modules[name]

    drop_modules()
    yield
    drop_modules()


def _fake_distribution(tmp_path: Path, dist: str, entry_points: str, monkeypatch) -> None:
    """An installed distribution ``dist`` declaring ``entry_points`` (entry_points.txt syntax)."""
    info = tmp_path / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    for reg in REGISTRIES.values():  # the next lookup scans the entry points again
        monkeypatch.setattr(reg, "_entry_points_loaded", False)


class SumLogit(nn.Module):
    """Logits ``(0, sum of pixels)``: p(class 1) = sigmoid(sum x), p(class 0) = sigmoid(-sum x)."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _check_topk_deletion_drop(name: str) -> None:
    """The top-k deletion drop on 2 x 2 images [[1, 2], [3, 4]] (pixel sum 10), by hand."""
    model = SumLogit().eval()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    a = torch.stack([x[0], -x[0], x[0]])  # images 0, 2 rank 4, 3, 2, 1; image 1 ranks 1, 2, 3, 4
    t = torch.tensor([1, 1, 0])
    attr = Attribution(a)

    def scores(**params) -> list[float]:
        res = compute_metric(name, model, x, t, attr, **params)
        assert res.curves == {} and res.scores.dtype == x.dtype and res.scores.shape == (3,)
        return res.scores.tolist()

    # frac 0.5 -> k = 2: zero substrate deletes 4 + 3 (sum 3) or 1 + 2 (sum 7)
    expected = [_sig(10) - _sig(3), _sig(10) - _sig(7), _sig(-10) - _sig(-3)]
    assert scores(frac=0.5) == pytest.approx(expected, abs=1e-6)
    assert scores(frac=0.5, chunk_size=1) == pytest.approx(expected, abs=1e-6)
    # mean substrate: the deleted pixels take the image mean 2.5
    assert scores(frac=0.5, substrate="mean") == pytest.approx(
        [_sig(10) - _sig(8), _sig(10) - _sig(12), _sig(-10) - _sig(-8)], abs=1e-6
    )
    # k = round(0.3 * 4) = 1 (rounded, not ceil): only the top pixel goes
    assert scores(frac=0.3) == pytest.approx([_sig(10) - _sig(6), _sig(10) - _sig(9), _sig(-10) - _sig(-6)], abs=1e-6)
    with pytest.raises(BenchError, match="frac"):
        compute_metric(name, model, x, t, attr, frac=0.0)


# --- docs/adding-a-metric.md -----------------------------------------------------------------


def _doc_code() -> str:
    text = (REPO / "docs" / "adding-a-metric.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/adding-a-metric.md has one python code block, the executed example"
    return blocks[0]


def test_doc_example_metric_runs(isolated, capsys):
    code = _doc_code()
    name = re.search(r'register_metric\(\s*"([^"]+)"', code).group(1)
    assert name not in METRICS
    try:
        exec(compile(code, "docs/adding-a-metric.md", "exec"), {"__name__": "doc_example"})
        printed = capsys.readouterr().out
        assert "(0.0, 2.0)" in printed  # the block's own print of the pass count
        entry = METRICS.get(name)
        assert (
            entry.meta["higher_is_better"] is True
            and entry.meta["needs"] == ()
            and entry.meta["reads"] == "preprocessed"
        )
        doc = entry.obj.__doc__
        assert re.search(r"et al\. 20\d\d", doc) and "p(x) - p(x_k)" in doc  # paper and formula
        assert metric_params(name) == {"frac": 0.1, "substrate": "zero", "chunk_size": 32}
        assert metric_passes_per_image(name) == (0.0, 2.0)
        assert metric_passes_per_image(name, {"frac": 0.5}) == (0.0, 2.0)
        _check_topk_deletion_drop(name)
    finally:
        METRICS.unregister(name)
    assert name not in METRICS


# --- entry points of the metric, model and dataset groups --------------------------------------

PLUGIN_MODULES = {
    "fake_bench_metric": '''
        from bench.metrics import register_metric

        @register_metric("fakeplugin.attribution_mass", higher_is_better=False, kind="test", passes=(0, 0),
                         paper="Nobody et al. 2024")
        def attribution_mass(model, inputs, targets, attribution, *, context=None, power: float = 1.0):
            """Sum of |attribution|^power per image (Nobody et al. 2024)."""
            return attribution.values.abs().pow(power).flatten(1).sum(1)
    ''',
    "fake_bench_model": '''
        from torch import nn
        from models import register_model

        @register_model("fakeplugin.linear", family="fakeplugin")
        def linear(*, in_channels=1, num_classes=2, image_size=28):
            """Flatten and one linear layer."""
            return nn.Sequential(nn.Flatten(1), nn.Linear(in_channels * image_size * image_size, num_classes))
    ''',
    "fake_bench_dataset": '''
        import torch
        from datasets import ImageSplit, register_dataset

        @register_dataset("fakeplugin.constant", in_channels=1, num_classes=2, has_masks=False)
        def constant(split, *, n: int = 4, size: int = 8, value: float = 0.5):
            """``n`` images of one grey level ``value``; labels alternate 0, 1."""
            return ImageSplit(images=torch.full((n, 1, size, size), float(value)), labels=torch.arange(n) % 2,
                              name="fakeplugin.constant", split=split, info={"value": value})
    ''',
}
PLUGIN_ENTRY_POINTS = (
    "[bench.metrics]\nmass = fake_bench_metric\n\n"
    "[bench.models]\nlinear = fake_bench_model\n\n"
    "[bench.datasets]\nconstant = fake_bench_dataset\n"
)


def test_metric_model_and_dataset_plugins_load_lazily_through_their_entry_point_groups(tmp_path, monkeypatch, isolated):
    for module, source in PLUGIN_MODULES.items():
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    _fake_distribution(tmp_path, "fake_bench_plugins", PLUGIN_ENTRY_POINTS, monkeypatch)
    assert not any(m in sys.modules for m in PLUGIN_MODULES), "imported before any lookup"

    # model: the first MODELS lookup imports the bench.models entry point, and only that one
    net = build_model("fakeplugin.linear", in_channels=1, num_classes=3, image_size=8)
    assert "fake_bench_model" in sys.modules
    assert "fake_bench_dataset" not in sys.modules and "fake_bench_metric" not in sys.modules
    assert MODELS.get("fakeplugin.linear").meta == {"family": "fakeplugin"}
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 3)

    # dataset: declared options, one of them passed, an unknown one refused in one line
    assert dataset_options("fakeplugin.constant") == {"n": 4, "size": 8, "value": 0.5}
    assert "fake_bench_dataset" in sys.modules and "fake_bench_metric" not in sys.modules
    split = load_split("fakeplugin.constant", "val", n=3, value=0.25)
    assert split.images.shape == (3, 1, 8, 8) and bool((split.images == 0.25).all())
    assert split.split == "val" and split.labels.tolist() == [0, 1, 0]
    assert load_split("fakeplugin.constant", "test").images.shape == (4, 1, 8, 8)  # defaults
    with pytest.raises(BenchError) as exc:
        load_split("fakeplugin.constant", "val", colour=1)
    msg = str(exc.value)
    assert "\n" not in msg and "'fakeplugin.constant' has no option 'colour'" in msg and "n=4, size=8, value=0.5" in msg

    # metric: computed through compute_metric, with its declared pass count
    assert "fake_bench_metric" not in sys.modules
    a = torch.zeros(2, 1, 8, 8)
    a[0] = 0.5
    a[1, 0, 3, 4] = -2.0
    res = compute_metric(
        "fakeplugin.attribution_mass",
        net.eval(),
        torch.rand(2, 1, 8, 8),
        torch.tensor([0, 2]),
        Attribution(a),
        power=2.0,
    )
    assert "fake_bench_metric" in sys.modules
    assert res.scores.tolist() == pytest.approx([0.25 * 64, 4.0])
    assert METRICS.get("fakeplugin.attribution_mass").meta["higher_is_better"] is False
    assert metric_passes_per_image("fakeplugin.attribution_mass") == (0.0, 0.0)


BROKEN = [  # group, registry kind, a public lookup, the exception the plug-in raises on import
    ("bench.metrics", "metric", lambda: metric_params("anything"), "ImportError"),
    ("bench.models", "model", lambda: build_model("anything"), "RuntimeError"),
    ("bench.datasets", "dataset", lambda: load_split("anything", "test"), "AttributeError"),
]


@pytest.mark.parametrize("group, kind, lookup, error", BROKEN, ids=[b[1] for b in BROKEN])
def test_broken_plugin_is_an_error_naming_the_plugin_and_its_group(
    tmp_path, monkeypatch, isolated, group, kind, lookup, error
):
    module = f"broken_bench_{kind}_plugin"
    (tmp_path / f"{module}.py").write_text(f"raise {error}('needs torch>=9')\n")
    (tmp_path / f"fake_bench_{kind}_sibling.py").write_text("")  # a healthy plug-in listed after it
    _fake_distribution(
        tmp_path, module, f"[{group}]\nbroken_{kind} = {module}\nsibling = fake_bench_{kind}_sibling\n", monkeypatch
    )
    with pytest.raises(BenchError) as exc:
        lookup()
    assert f"fake_bench_{kind}_sibling" in sys.modules  # the broken one does not stop the others loading
    with pytest.raises(BenchError, match=f"could not load {kind} plug-in"):
        lookup()  # and it stays an error on every later lookup, never "unknown name"
    msg = str(exc.value)
    assert not isinstance(exc.value, UnknownNameError), "a broken plug-in must not look like an unknown name"
    assert f"could not load {kind} plug-in 'broken_{kind}' ({module})" in msg
    assert f"entry-point group '{group}'" in msg and f"{error}: needs torch>=9" in msg
    for other_group, reg in REGISTRIES.items():  # the other groups do not import it
        if other_group != group:
            assert reg.names()


# --- examples/pneumobench_example_plugin ------------------------------------------------------

EXAMPLE_NAMES = {"bench.explainers": {"example.smoothgrad"}, "bench.metrics": {"example.topk_deletion_drop"}}


def _example_entry_points() -> dict[str, dict[str, str]]:
    return tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]


def test_example_plugin_declares_entry_points_in_both_groups_to_existing_modules():
    eps = _example_entry_points()
    assert set(EXAMPLE_NAMES) <= set(eps), f"entry-point groups declared: {sorted(eps)}"
    for group in EXAMPLE_NAMES:
        assert eps[group], group
        for value in eps[group].values():
            module, _, attr = value.partition(":")
            assert not attr, "the entry point is the module whose import registers"
            path = EXAMPLE / "src" / Path(*module.split("."))
            assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), value


def test_example_plugin_modules_register_what_they_claim(monkeypatch, isolated):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    eps = _example_entry_points()
    for group in ("bench.explainers", "bench.metrics"):  # the explainer module alone registers no metric
        for module in eps[group].values():
            assert not (EXAMPLE_NAMES[group] & set(REGISTRIES[group]._entries))
            importlib.import_module(module)
            assert EXAMPLE_NAMES[group] <= set(REGISTRIES[group]._entries), (group, module)
        if group == "bench.explainers":
            assert not (EXAMPLE_NAMES["bench.metrics"] & set(METRICS._entries))

    # SmoothGrad: n_samples forward+backward passes per image; on a linear logit the gradient is exact
    assert passes_per_image("example.smoothgrad") == (16.0, 0.0)
    assert passes_per_image("example.smoothgrad", {"n_samples": 5}, background_size=7) == (5.0, 0.0)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    attr = run_explainer("example.smoothgrad", SumLogit().eval(), x, torch.tensor([1, 0]), background=x, n_samples=3)
    torch.testing.assert_close(attr.values, torch.stack([torch.ones_like(x[0]), torch.zeros_like(x[0])]))

    # the metric: the guide's top-k deletion drop under a prefixed name
    assert METRICS.get("example.topk_deletion_drop").meta["higher_is_better"] is True
    assert metric_passes_per_image("example.topk_deletion_drop") == (0.0, 2.0)
    _check_topk_deletion_drop("example.topk_deletion_drop")


def test_example_plugin_loads_through_its_declared_entry_points(tmp_path, monkeypatch, isolated):
    """An install of the example, faked from its pyproject: each registry imports its own module."""
    eps = _example_entry_points()
    text = "\n".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps[g].items()) for g in EXAMPLE_NAMES)
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    _fake_distribution(tmp_path, "pneumobench_example_plugin", text, monkeypatch)
    found = {
        g: sorted(ep.value for ep in metadata.entry_points(group=g) if ep.dist.name == "pneumobench_example_plugin")
        for g in EXAMPLE_NAMES
    }
    assert found == {g: sorted(eps[g].values()) for g in EXAMPLE_NAMES}
    assert not any(m.startswith("pneumobench_example_plugin") for m in sys.modules)
    assert EXPLAINERS.get("example.smoothgrad").meta["library"] == "pneumobench-example-plugin"
    assert "pneumobench_example_plugin" in sys.modules  # the explainer group imports the package only
    assert "pneumobench_example_plugin.metrics" not in sys.modules
    assert "example.topk_deletion_drop" not in METRICS._entries
    assert metric_params("example.topk_deletion_drop") == {"frac": 0.1, "substrate": "zero", "chunk_size": 32}
    assert "pneumobench_example_plugin.metrics" in sys.modules
