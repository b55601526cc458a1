"""The gradient explainers' ``precision`` parameter (explainers.base.explainer_precision): float32 is
the adapter bit for bit, bfloat16 runs the passes under autocast and returns float32 values, exact
methods have no such parameter, float16 off CUDA is a one-line error before any work, and the
randomisation cascade re-runs the explainer in its precision."""

from __future__ import annotations

import pytest
import torch

import bench
from bench.run.config import load_config
from explainers import explainer_params, list_explainers, run_explainer
from tests.conftest import bench_error, calibrated

pytestmark = pytest.mark.usefixtures("one_thread")

# the adapters whose model passes are plain gradients (and so may run in reduced precision)
GRADIENT = [
    "captum.saliency",
    "captum.input_x_gradient",
    "captum.guided_backprop",
    "captum.integrated_gradients",
    "captum.gradient_shap",
    "captum.smoothgrad",
    "captum.vargrad",
    "shap.gradient",
    "pneumobench.expected_gradients",
]
EXACT = ["captum.deeplift", "captum.deeplift_shap", "shap.deep", "shap.partition"]  # additivity is their point
SMALL = {
    "captum.integrated_gradients": {"n_steps": 8},
    "captum.gradient_shap": {"n_samples": 8},
    "captum.smoothgrad": {"n_samples": 8},
    "captum.vargrad": {"n_samples": 8},
    "shap.gradient": {"nsamples": 8},
    "pneumobench.expected_gradients": {"n_samples": 8},
}


@pytest.fixture(scope="module")
def setup():
    model = calibrated("resnet18", seed=0)
    g = torch.Generator().manual_seed(1)
    x, bg = torch.rand(3, 1, 28, 28, generator=g), torch.rand(6, 1, 28, 28, generator=g)
    return model, x, torch.tensor([0, 1, 1]), bg


def test_exactly_the_gradient_explainers_take_a_precision():
    have = {n for n in list_explainers() if "precision" in explainer_params(n)}
    assert have == set(GRADIENT)
    assert all(explainer_params(n)["precision"] == "float32" for n in GRADIENT)


@pytest.mark.parametrize("name", GRADIENT)
def test_float32_is_the_adapter_and_bfloat16_is_close_but_not_it(setup, name):
    model, x, y, bg = setup
    p = SMALL.get(name, {})
    default = run_explainer(name, model, x, y, background=bg, **p)
    fp32 = run_explainer(name, model, x, y, background=bg, precision="float32", **p)
    bf16 = run_explainer(name, model, x, y, background=bg, precision="bfloat16", **p)
    assert torch.equal(default.values, fp32.values)  # no autocast at all
    assert bf16.values.dtype == torch.float32 and bf16.values.shape == x.shape
    assert not torch.equal(bf16.values, fp32.values)  # the passes did run in bfloat16
    rel = ((bf16.values - fp32.values).flatten(1).norm(dim=1) / fp32.values.flatten(1).norm(dim=1)).max()
    assert rel < 0.5  # bfloat16's 8-bit mantissa: percents, not a different map (measured: 1-20 %)
    assert bf16.meta["precision"] == "bfloat16" and fp32.meta["precision"] == "float32"
    if fp32.outputs is not None:  # f(x) and the base values are float32 passes either way
        assert torch.equal(bf16.outputs, fp32.outputs) and torch.equal(bf16.base_values, fp32.base_values)


@pytest.mark.parametrize("name", EXACT)
def test_exact_methods_have_no_precision(setup, name):
    model, x, y, bg = setup
    msg = bench_error(run_explainer, name, model, x, y, background=bg, precision="bfloat16")
    assert "precision" in msg and "\n" not in msg


def test_a_bad_or_cuda_only_precision_is_refused_before_any_work(tmp_path):
    msg = bench_error(load_config, "tiny", ['explain.params."captum.saliency".precision="half"'])
    assert "precision" in msg and "bfloat16" in msg and "\n" not in msg
    if not torch.cuda.is_available():
        msg = bench_error(load_config, "tiny", ['explain.params."captum.saliency".precision="float16"', 'device="cpu"'])
        assert "explain.params" in msg and "CUDA" in msg and "\n" not in msg
        model, x = calibrated("tiny", seed=0, size=28), torch.rand(2, 1, 28, 28)
        msg = bench_error(
            run_explainer, "captum.saliency", model, x, torch.tensor([0, 1]), background=x, precision="float16"
        )
        assert "CUDA" in msg and "\n" not in msg
    assert (
        load_config("tiny", ['explain.params."captum.saliency".precision="bfloat16"']).explain.params[
            "captum.saliency"
        ]["precision"]
        == "bfloat16"
    )


def test_the_randomisation_cascade_reexplains_in_the_explainers_precision(monkeypatch):
    from bench.run import unit as U

    calls: list[str] = []
    real = U.run_explainer

    def spy(name, *args, **kwargs):
        calls.append(kwargs.get("precision", "float32"))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(U, "run_explainer", spy)
    model = calibrated("tiny", seed=0)
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = bench.evaluate(
        model,
        images,
        explainers=["captum.saliency"],
        metrics=["randomisation_similarity"],
        explainer_params={"captum.saliency": {"precision": "bfloat16"}},
        metric_params={"randomisation_similarity": {"steps": 2}},
        overrides=["reliability.substrates=[]", "reliability.imputation=false"],
        verbose=False,
    )
    assert len(calls) >= 3 and set(calls) == {"bfloat16"}  # the map and each of the 2 cascade steps
    scores = out.scores
    assert (scores[scores["metric"] == "randomisation_similarity"]["status"] == "ok").all()
