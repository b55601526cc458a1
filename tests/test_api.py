"""Your own model: ``bench.evaluate`` from a notebook and ``[models.user.<name>]`` in a run config.

A torchvision resnet18 (1-channel first conv, 2 classes) is trained here by a plain PyTorch loop
(not by pneumobench), saved as a state dict, and benchmarked both ways on the same images,
explainers, metrics, background and seed: the per-image scores and curves are equal exactly (the
same weights, inputs and batch shapes run the same CPU kernels, so the values are bitwise equal;
a tolerance would hide a difference in how the two paths build their units).
"""

from __future__ import annotations

import itertools
import json
import textwrap
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

import bench
from bench.cli import main
from bench.core.errors import BenchError
from bench.core.io import file_sha256
from bench.core.schema import SCORE_COLUMNS
from bench.report import leaderboard as L
from bench.run import plan as P
from datasets import load_split
from models.user import UserModelSpec, load_user_model, torchvision_resnet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny workloads: one thread (tests/conftest.py)

EXPLAINERS = ["captum.saliency", "captum.integrated_gradients", "random"]
METRICS = ["deletion_auc", "drop_rate", "additivity_error"]
EXPLAINER_PARAMS = {"captum.integrated_gradients": {"n_steps": 4, "baseline": "background_mean"}}
METRIC_PARAMS = {"deletion_auc": {"steps": 4}}
CHEAP_CARD = [
    "reliability.substrates=[]",
    "reliability.imputation=false",
    "reliability.bootstrap=100",
    "reliability.splits=10",
]
N_TEST, N_BACKGROUND, SEED = 8, 4, 0
TIMING = ["seconds_per_image", "peak_mem_mb"]


def resnet18_1ch() -> nn.Module:
    """What a researcher writes: torchvision's resnet18 with a 1-channel first conv and 2 classes."""
    model = torchvision.models.resnet18(weights=None, num_classes=2)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


FACTORY_MODULE = """
import torchvision
from torch import nn


def build(num_classes=2):
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
"""


@pytest.fixture(scope="module")
def trained(one_thread, tmp_path_factory):
    """(model, state-dict path, folder holding the factory module ``mynets``): 8 Adam steps on synthetic data."""
    torch.manual_seed(0)
    train = load_split("synthetic", "train", n=64, seed=3)
    model = resnet18_1ch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(8):
        idx = torch.randint(0, len(train), (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("user")
    torch.save(model.state_dict(), folder / "myresnet.pt")
    (folder / "mynets.py").write_text(FACTORY_MODULE)
    return model, folder / "myresnet.pt", folder


def _splits():
    """The config's data (synthetic, n = N_TEST per split, seed 3) as the notebook sees it."""
    train = load_split("synthetic", "train", n=N_TEST, seed=3)
    test = load_split("synthetic", "test", n=N_TEST, seed=3)
    return train, test, P.background(train, N_BACKGROUND, SEED)  # the run's background draw


def _config_file(
    tmp_path,
    checkpoint,
    *,
    factory="mynets:build",
    kwargs="{ num_classes = 2 }",
    convert="true",
    stages='["pre"]',
    extra="",
):
    path = tmp_path / "mine.toml"
    path.write_text(
        textwrap.dedent(f"""\
        name = "mine"
        seed = {SEED}
        device = "cpu"
        results_dir = "{tmp_path / "results"}"

        [data]
        dataset = "synthetic"
        sample = "all"
        background_size = {N_BACKGROUND}
        options = {{ n = {N_TEST}, seed = 3 }}

        [models]
        names = ["myresnet"]
        stages = {stages}

        [models.user.myresnet]
        factory = "{factory}"
        kwargs = {kwargs}
        checkpoint = "{checkpoint}"
        convert = {convert}
        {extra}
        [explain]
        names = {json.dumps(EXPLAINERS)}
        shard_size = 4
        params = {{ "captum.integrated_gradients" = {{ n_steps = 4, baseline = "background_mean" }} }}

        [metrics]
        names = {json.dumps(METRICS)}
        params = {{ deletion_auc = {{ steps = 4 }} }}
        """)
    )
    return path


def _evaluate(model, images, labels, background, **kw):
    args = dict(
        labels=labels,
        explainers=EXPLAINERS,
        metrics=METRICS,
        background=background,
        explainer_params=EXPLAINER_PARAMS,
        metric_params=METRIC_PARAMS,
        device="cpu",
        seed=SEED,
        shard_size=4,
        model_name="myresnet",
        overrides=CHEAP_CARD,
        verbose=False,
    )
    return bench.evaluate(model, images, **{**args, **kw})


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_notebook_and_config_give_the_same_scores(trained, tmp_path, monkeypatch):
    model, ckpt, folder = trained
    monkeypatch.syspath_prepend(str(folder))  # the user's own package, importable as for `python -m bench run`
    train, test, bg = _splits()

    res = _evaluate(model, test.images, test.labels, bg, convert=True)
    assert (
        main(
            [
                "run",
                "--config",
                str(_config_file(tmp_path, ckpt)),
                "--no-progress",
                *sum((["--set", s] for s in CHEAP_CARD), []),
            ]
        )
        == 0
    )
    run_dir = tmp_path / "results" / "mine"

    cli = L.read_scores(run_dir / "scores.csv")
    assert list(res.scores.columns) == list(SCORE_COLUMNS)
    assert len(res.scores) == N_TEST * len(EXPLAINERS) * len(METRICS)
    assert set(res.scores.cell) <= {"TP", "FP", "FN", "TN"} and (res.scores.label >= 0).all()
    ok = res.scores[res.scores.status == "ok"]
    assert ok.value.notna().all() and ok.explainer.nunique() == len(EXPLAINERS)
    pd.testing.assert_frame_equal(res.scores.drop(columns=TIMING), cli.drop(columns=TIMING), check_exact=True)
    curves = pd.read_csv(run_dir / "curves.csv", keep_default_na=False, na_values={"prob": ["", "nan"]})
    pd.testing.assert_frame_equal(res.curves(), curves, check_exact=True)
    # the same statistics as the CLI's leaderboard (timing columns aside)
    stats = ["model", "stage", "explainer", "metric", "mean", "ci_low", "ci_high", "n", "rank", "status"]
    pd.testing.assert_frame_equal(res.leaderboard()[stats], L.leaderboard(cli)[stats], check_exact=True)

    # what each manifest records about the model
    cli_model = json.loads((run_dir / "manifest.json").read_text())["checkpoints"][0]
    user = cli_model["train_config"]["user_model"]
    assert (user["factory"], user["kwargs"], user["checkpoint"]) == ("mynets:build", {"num_classes": 2}, str(ckpt))
    assert user["checkpoint_sha256"] == file_sha256(ckpt) and cli_model["sha256"] == user["model_key"]
    assert user["safety"]["ok"] is False and user["conversion"]["safety_after"]["ok"] is True
    assert user["conversion"]["max_abs_output_difference"] < 1e-5 and user["conversion"]["n_images"] == N_TEST
    info = res.model_info
    assert info["class"] == "torchvision.models.resnet.ResNet" and info["convert"] is True
    assert info["state_dict_sha256"] == user["state_dict_sha256"]  # the same weights both ways
    assert info["conversion"]["max_abs_output_difference"] < 1e-5
    assert res.manifest["versions"]["torch"] == torch.__version__
    assert res.manifest["config"]["data"]["background"] == "given"
    assert not model.training and isinstance(model.layer1[0], torchvision.models.resnet.BasicBlock)  # untouched

    # .save() writes a run directory that `bench report` rebuilds byte for byte
    saved = res.save(tmp_path / "saved")
    assert res.to_markdown() == (saved / "leaderboard.md").read_text()
    assert {"scores.csv", "curves.csv", "manifest.json", "leaderboard.csv", "leaderboard.md"} <= set(_files(saved))
    assert any(name.startswith("figures/curves_") for name in _files(saved))
    before = _files(saved)
    assert main(["report", str(saved)]) == 0
    assert _files(saved) == before
    figures = res.plot()
    assert set(figures) == {"leaderboard", "curves"} and all(f.axes for f in figures.values())


def test_convert_makes_shap_deep_exact_and_unsafe_models_warn(trained):
    model, _, _ = trained
    _, test, bg = _splits()
    common = dict(
        explainers=["shap.deep"],
        metrics=["additivity_error"],
        background=bg,
        device="cpu",
        overrides=["reliability.enabled=false"],
        verbose=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = bench.evaluate(model, test.images[:2], convert=True, **common)
    assert not [w for w in caught if "explainer-safe" in str(w.message)]  # a converted model is safe: no warning
    assert res.model_info["conversion"]["max_abs_output_difference"] < 1e-5
    assert (res.scores.status == "ok").all() and res.scores.value.max() < 1e-4  # logits
    with pytest.warns(UserWarning, match="not explainer-safe.*convert=True"):
        res = bench.evaluate(model, test.images[:2], **common)
    assert (res.scores.status == "error").all()  # recorded like any failing explainer, not raised
    assert res.scores.message.str.contains("inplace").all()
    assert res.scores.message.str.contains("convert=True").all() and res.scores.message.str.len().max() < 250
    assert res.model_info["conversion"] is None and res.model_info["safety"]["inplace_ops"]


def test_unlabelled_images_and_default_background(trained):
    model, _, _ = trained
    _, test, _ = _splits()
    with pytest.warns(UserWarning, match="convert=True"):
        res = bench.evaluate(
            model,
            test.images[:3],
            explainers=["random"],
            metrics=["drop_rate"],
            device="cpu",
            overrides=["reliability.enabled=false"],
            verbose=False,
        )
    preds = model(test.images[:3]).argmax(1)
    assert (res.scores.label == -1).all()
    assert res.scores.cell.tolist() == ["TP" if int(p) == 1 else "TN" for p in preds]
    assert res.manifest["data"]["background_size"] == 3 and res.manifest["data"]["targets"] == "predicted"
    assert res.scores.model.unique().tolist() == ["ResNet"]


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(images=torch.rand(28, 28)), ["(N, C, H, W)", "x[None, None]"]),
        (dict(images=torch.full((2, 1, 28, 28), float("nan"))), ["NaN", "nan_to_num"]),
        (
            dict(images=torch.rand(2, 3, 28, 28)),
            ["first conv takes 1-channel", "have 3 channel", "pass 1-channel images"],
        ),
        (dict(explainers=["shap.nope"]), ["unknown explainer 'shap.nope'", "captum.saliency"]),
        (dict(metrics=["nope_auc"]), ["unknown metric 'nope_auc'", "deletion_auc"]),
        (dict(explainer_params={"captum.integrated_gradients": {"n_steps": 0}}), ["n_steps"]),
        (dict(explainer_params={"captum.integrated_gradients": {"nsteps": 4}}), ["nsteps", "n_steps"]),
        (dict(explainers="random"), ["list of names", "['random']"]),
        (dict(targets=[0, 5]), ["targets", "0..1"]),
        (dict(labels=[1]), ["labels", "(2,)"]),
        (dict(background=torch.rand(4, 1, 14, 14)), ["background", "(1, 14, 14)"]),
        (dict(model=lambda x: x), ["nn.Module"]),
    ],
)
def test_notebook_errors_are_one_line(trained, change, words):
    model, _, _ = trained
    args = dict(
        model=model,
        images=torch.rand(2, 1, 28, 28),
        explainers=["captum.integrated_gradients"],
        metrics=["drop_rate"],
        verbose=False,
    )
    with pytest.raises(BenchError) as err:
        bench.evaluate(**{**args, **change})
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, (w, message)


RUNS = itertools.count()


def _run_error(capsys, config, *sets):
    name = f"err{next(RUNS)}"  # a failed run keeps its folder (and config): each case gets its own
    rc = main(["run", "--config", str(config), "--no-progress", "--name", name, *sum((["--set", s] for s in sets), [])])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_config_errors_are_one_line(trained, tmp_path, capsys, monkeypatch):
    model, ckpt, folder = trained
    monkeypatch.syspath_prepend(str(folder))
    # tuning applies to models pneumobench trains
    err = _run_error(capsys, _config_file(tmp_path, ckpt, stages='["pre", "post"]'))
    assert "'myresnet' is a user model" in err and 'models.stages = ["pre"]' in err
    # a factory path that does not import, or is not module:function
    assert "cannot import 'nopkg.nets'" in _run_error(capsys, _config_file(tmp_path, ckpt, factory="nopkg.nets:build"))
    assert 'is not "module:function"' in _run_error(capsys, _config_file(tmp_path, ckpt, factory="mynets.build"))
    assert "has no 'nope'" in _run_error(capsys, _config_file(tmp_path, ckpt, factory="mynets:nope"))
    assert "unknown key" in _run_error(capsys, _config_file(tmp_path, ckpt, extra="layers = 3\n"))
    assert "(did you mean 'convert'?)" in _run_error(capsys, _config_file(tmp_path, ckpt, extra="convrt = true\n"))
    # a missing or corrupt checkpoint
    err = _run_error(capsys, _config_file(tmp_path, tmp_path / "missing.pt"))
    assert "missing.pt not found" in err and "torch.save(model.state_dict()" in err
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    assert "cannot be read" in _run_error(capsys, _config_file(tmp_path, tmp_path / "corrupt.pt"))
    # a state dict that does not fit the factory's model (3 classes)
    err = _run_error(capsys, _config_file(tmp_path, ckpt, kwargs="{ num_classes = 3 }"))
    assert "does not fit" in err and "fc.weight: checkpoint (2, 512), model (3, 512)" in err
    # torchvision's own resnet18: a 3-channel first conv on 1-channel data
    three = torchvision.models.resnet18(weights=None, num_classes=2)
    torch.save(three.state_dict(), tmp_path / "rgb.pt")
    err = _run_error(capsys, _config_file(tmp_path, tmp_path / "rgb.pt", factory="torchvision.models:resnet18"))
    assert "first conv takes 3-channel images, the images have 1 channel" in err
    assert "models.user:torchvision_resnet" in err and "in_channels = 1" in err
    # a model with 1000 outputs for 2 classes
    torch.save(torchvision_resnet("resnet18", in_channels=1, num_classes=1000).state_dict(), tmp_path / "k1000.pt")
    err = _run_error(
        capsys,
        _config_file(
            tmp_path,
            tmp_path / "k1000.pt",
            factory="models.user:torchvision_resnet",
            kwargs='{ arch = "resnet18", in_channels = 1, num_classes = 1000 }',
        ),
    )
    assert "has 1000 outputs, the data has 2 classes" in err and "num_classes = 2" in err
    err = _run_error(capsys, _config_file(tmp_path, ckpt), "models.user.myresnet.kwargs={num_classes = 2, x = 1}")
    assert "raised TypeError" in err and "fix kwargs" in err


def test_model_key_follows_checkpoint_and_conversion(trained, tmp_path, monkeypatch):
    """The cache key of a user model's units carries the checkpoint's sha256, the factory and the conversion."""
    model, ckpt, folder = trained
    monkeypatch.syspath_prepend(str(folder))
    images = load_split("synthetic", "test", n=4, seed=3).images

    def key(path, convert=False, factory="mynets:build"):
        spec = UserModelSpec.from_table("m", {"factory": factory, "checkpoint": str(path), "convert": convert})
        return load_user_model(spec, images, 2, warn=lambda s: None)[1]["model_key"]

    changed = {k: v.clone() for k, v in model.state_dict().items()}
    changed["fc.bias"] += 1e-3
    torch.save(changed, tmp_path / "changed.pt")
    keys = [
        key(ckpt),
        key(tmp_path / "changed.pt"),
        key(ckpt, convert=True),
        key(ckpt, factory="models.user:torchvision_resnet"),
    ]
    assert len(set(keys)) == 4 and key(ckpt) == keys[0]
    # the same weights under {"state_dict": ...} (as pneumobench's own checkpoints store them) load too
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    spec = UserModelSpec.from_table("m", {"factory": "mynets:build", "checkpoint": str(tmp_path / "wrapped.pt")})
    loaded, record = load_user_model(spec, images, 2, warn=lambda s: None)
    assert torch.equal(loaded(images), model(images))
    assert record["checkpoint_sha256"] == file_sha256(tmp_path / "wrapped.pt")


# ----------------------------------------------------------------------------- maps computed elsewhere


@pytest.fixture(scope="module")
def tiny_and_maps(one_thread):
    """A calibrated tiny CNN, 8 images and a map of them computed outside pneumobench (|gradient|, (N, H, W)
    float64)."""
    from tests.conftest import calibrated

    model = calibrated("tiny", head_scale=5)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(model(xg)[:, 1].sum(), xg)[0].abs()
    return model, x, grad[:, 0].numpy().astype("float64")


def test_own_maps_are_scored_by_every_metric_and_the_card(tiny_and_maps, tmp_path):
    from bench.metrics import compute_metric
    from bench.run.unit import FIXED_MAP, tensor_digest

    model, x, mine = tiny_and_maps
    mine = mine.copy()
    mine.setflags(write=False)  # a read-only array (np.load(..., mmap_mode="r")): torch would warn on it
    targets = torch.ones(len(x), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing of the library's leaks into a notebook
        res = bench.evaluate(
            model,
            x,
            targets=1,
            attributions={"mine": mine},
            explainers=["random"],
            metrics=["deletion_auc", "drop_rate", "max_sensitivity", "additivity_error"],
            metric_params={"deletion_auc": {"steps": 4}, "max_sensitivity": {"samples": 2}},
            device="cpu",
            shard_size=8,
            overrides=CHEAP_CARD,
            verbose=False,
        )
    s = res.scores.set_index(["explainer", "metric"]).sort_index()
    assert set(res.scores.explainer) == {"mine", "random"}
    # scored as compute_metric scores the same map
    direct = compute_metric("deletion_auc", model, x, targets, mine, steps=4).scores
    scored = torch.as_tensor(s.loc[("mine", "deletion_auc"), "value"].to_numpy(copy=True))
    assert torch.allclose(scored, direct.double(), rtol=1e-6, atol=1e-7)
    # a metric that re-runs the explainer cannot score a fixed map: n/a with the reason, not an error
    fixed = s.loc[("mine", "max_sensitivity")]
    assert (fixed.status == "n/a").all() and (fixed.message == FIXED_MAP).all()
    assert (s.loc[("random", "max_sensitivity"), "status"] == "ok").all()
    assert (s.loc[("mine", "additivity_error"), "status"] == "n/a").all()  # a map has no outputs
    given = res.manifest["config"]["explain"]["given"]["mine"]
    assert given["sha256"] == tensor_digest(torch.tensor(mine, dtype=torch.float32)[:, None])
    assert given["not_scored"] == ["max_sensitivity"]
    assert res.manifest["config"]["explain"]["names"] == ["random", "mine"]
    assert "mine" in res.files["reliability.md"].decode()  # the card judges it against the controls
    board = res.leaderboard().set_index(["explainer", "metric"])
    assert board.loc[("mine", "max_sensitivity"), "status"] == "n/a"
    # saved, `bench report` rebuilds it byte for byte
    saved = res.save(tmp_path / "mine")
    before = _files(saved)
    assert main(["report", str(saved)]) == 0
    assert _files(saved) == before


def test_own_maps_alone_in_any_layout_and_their_digest(tiny_and_maps):
    from bench.run.config import load_config
    from bench.run.unit import Stage, Unit

    model, x, mine = tiny_and_maps
    common = dict(
        targets=1,
        explainers=[],
        metrics=["drop_rate"],
        device="cpu",
        verbose=False,
        overrides=["reliability.enabled=false"],
    )
    a = bench.evaluate(model, x, attributions={"mine": mine}, **common)
    b = bench.evaluate(model, x, attributions={"mine": torch.as_tensor(mine, dtype=torch.float32)[:, None]}, **common)
    assert set(a.scores.explainer) == {"mine"} and a.manifest["config"]["explain"]["names"] == ["mine"]
    pd.testing.assert_frame_equal(a.scores, b.scores)  # (N, H, W) float64 and (N, 1, H, W) float32: the same map
    assert a.manifest["config"]["explain"]["given"] == b.manifest["config"]["explain"]["given"]
    other = bench.evaluate(model, x, attributions={"mine": mine[::-1].copy()}, **common)
    assert (
        other.manifest["config"]["explain"]["given"]["mine"]["sha256"]
        != a.manifest["config"]["explain"]["given"]["mine"]["sha256"]
    )
    # the cache key of a unit carries its map: another map under the same name is computed again
    cfg = load_config(None, ['explain.names=["random"]'])
    stage = Stage("m", "pre", Path("m"), "key", {}, model)
    idx = torch.arange(len(x))

    def key(given):
        return Unit(
            cfg, stage, "mine", {}, "data", idx, x, idx, idx, None, x[:2], torch.device("cpu"), Path("."), given=given
        ).attr_key

    maps = torch.as_tensor(mine, dtype=torch.float32)[:, None]
    assert key(maps) == key(maps.clone()) != key(maps.flip(0))


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(attributions={"random": "m"}), ["'random' is the name of a registered explainer", "my-random"]),
        (dict(attributions={"a b": "m"}), ["'a b' is not a plain name"]),
        (dict(attributions=["m"]), ["attributions must be a dict"]),
        (dict(attributions={"mine": "short"}), ["attributions['mine'] has shape", "(2, 28, 28)"]),
        (dict(attributions={"mine": "nan"}), ["attributions['mine'] holds 1 NaN"]),
    ],
)
def test_own_map_errors_are_one_line(tiny_and_maps, change, words):
    model, x, _ = tiny_and_maps
    maps = {"m": torch.rand(2, 28, 28), "short": torch.rand(1, 28, 28), "nan": torch.rand(2, 1, 28, 28)}
    maps["nan"][0, 0, 0, 0] = float("nan")
    given = change["attributions"]
    given = {k: maps[v] for k, v in given.items()} if isinstance(given, dict) else given
    with pytest.raises(BenchError) as err:
        bench.evaluate(model, x[:2], attributions=given, explainers=["random"], metrics=["drop_rate"], verbose=False)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


class InplaceAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        y += 1.0  # no exact rewrite: refused by convert
        return self.fc(y.mean((2, 3)))


def test_convert_refuses_before_any_work_and_records_what_it_rewrote(tiny_and_maps, monkeypatch):
    from bench.run import runner

    model, x, _ = tiny_and_maps
    monkeypatch.setattr(runner, "execute_units", lambda *a, **k: pytest.fail("explained before refusing"))
    with pytest.raises(
        BenchError,
        match=r"^convert cannot make InplaceAdd explainer-safe: InplaceAdd.forward runs "
        r"an in-place op \(Tensor.add_\)",
    ):
        bench.evaluate(
            InplaceAdd().eval(), x, convert=True, explainers=["random"], metrics=["drop_rate"], verbose=False
        )
    monkeypatch.undo()
    unsafe = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    ).eval()
    res = bench.evaluate(
        unsafe,
        x[:2],
        convert=True,
        explainers=["shap.deep"],
        metrics=["additivity_error"],
        device="cpu",
        overrides=["reliability.enabled=false"],
        verbose=False,
    )
    assert res.model_info["conversion"]["rewritten"] == [
        "1: ReLU(inplace=True) -> inplace=False",
        "3: ReLU(inplace=True) -> inplace=False",
    ]
    assert (res.scores.status == "ok").all() and res.scores.value.max() < 1e-4  # DeepExplainer exact on the copy


def test_the_grad_cam_example_scores_its_maps():
    """examples/score_your_own_maps.py on small synthetic data: pytorch-grad-cam's maps, scored beside the controls
    exactly as compute_metric scores them."""
    import importlib.util

    from bench.metrics import compute_metric
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("score_your_own_maps", REPO / "examples" / "score_your_own_maps.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, images, labels, predicted, maps = example.your_model_and_maps(synthetic=True, n_images=8, steps=20)
    assert set(maps) == {"my-gradcam", "my-gradcam++"}
    assert all(m.shape == (8, 28, 28) and m.min() >= 0 and m.max() <= 1 for m in maps.values())  # CAMs, normalised
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = example.score(model, images, labels, predicted, maps, overrides=CHEAP_CARD, verbose=False)
    assert set(res.scores.explainer) == {"random", "edge", "my-gradcam", "my-gradcam++"}
    assert (res.scores.status == "ok").all() and set(res.scores.metric) == set(example.METRICS)
    s = res.scores.set_index(["explainer", "metric"]).sort_index()
    for name, m in maps.items():
        direct = compute_metric("drop_rate", model, images, predicted, m).scores.double()
        assert torch.allclose(torch.tensor(s.loc[(name, "drop_rate"), "value"].to_numpy()), direct, atol=1e-7)


class Aliased(nn.Module):
    """Its output reads a tensor an in-place ReLU changed: out of place, the same code computes something else."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        z = self.relu(y)  # in place: y is z
        return self.fc((y + z).mean((2, 3)))


def test_convert_refuses_a_copy_whose_outputs_differ(tiny_and_maps):
    _, x, _ = tiny_and_maps
    with pytest.raises(BenchError) as err:
        bench.evaluate(Aliased().eval(), x, convert=True, explainers=["random"], metrics=["drop_rate"], verbose=False)
    message = str(err.value)
    assert message.startswith("convert: the explainer-safe copy of Aliased differs from it by ") and "\n" not in message
    assert "relu: ReLU(inplace=True) -> inplace=False" in message and "run without convert" in message
