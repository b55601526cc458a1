"""Training, tuning with frozen blocks, evaluation and checkpoints (tiny model, synthetic data)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from bench.core.machine import cpu_name
from models.checkpoints import load_checkpoint, sidecar_path
from models.recipes import TrainConfig, TuneConfig
from models.training import evaluate, predict_outputs, predict_proba, train_model
from models.tuning import frozen_state, tune_model


@pytest.fixture(scope="module")
def data(synthetic_data):
    return synthetic_data


@pytest.fixture(scope="module")
def trained(tiny_checkpoint):
    return tiny_checkpoint


def test_sidecar_records_config_data_selection_and_metrics(trained, data):
    out, side = trained
    on_disk = json.loads(sidecar_path(out).read_text())
    assert on_disk == json.loads(json.dumps(side))
    assert side["config"]["model"] == "tiny" and side["config"]["epochs"] == 10
    assert side["config"]["dataset"] == "synthetic"
    assert 1 <= side["best_epoch"] <= 10 and len(side["history"]) == 10
    # the chosen epoch is the best on val loss (the default select_on)
    losses = [h["val_loss"] for h in side["history"]]
    assert side["best_epoch"] == int(np.argmin(losses)) + 1
    for split in ("val", "test"):
        m = side[split]
        assert set(m) >= {"acc", "auc", "sensitivity", "specificity", "confusion"}
        (tn, fp), (fn, tp) = m["confusion"]
        assert tn + fp + fn + tp == len(data[2] if split == "test" else data[1])
        assert m["acc"] == pytest.approx((tp + tn) / (tn + fp + fn + tp))
    assert side["data"]["dataset"] == "synthetic"
    assert side["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()  # the checkpoint file's own hash
    # the total covers every epoch (each epoch's seconds and the total are rounded to 0.1 s)
    epochs_seconds = sum(h["seconds"] for h in side["history"])
    assert side["train_seconds"] >= epochs_seconds - 0.05 * (len(side["history"]) + 1) - 1e-9
    # what the weights' float rounding depends on: torch's CPU kernel level and the CPU
    assert side["platform"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert side["platform"]["cpu"] == cpu_name() and side["platform"]["cpu_count"] == os.cpu_count()
    assert side["platform"]["torch_threads"] == torch.get_num_threads()  # as tests/conftest.py sets it


def test_tiny_model_learns_the_synthetic_opacity(trained):
    assert trained[1]["test"]["auc"] > 0.9


def test_checkpoint_round_trip_with_weights_only(trained, data):
    out, side = trained
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["model"] == "tiny" and ckpt["stage"] == "pre"
    model, info = load_checkpoint(out)
    assert info["sha256"] == side["sha256"] and not model.training
    again = evaluate(model, data[2])
    assert again["acc"] == pytest.approx(side["test"]["acc"]) and again["preds"] == side["test_preds"]


def test_same_seed_same_checkpoint(tmp_path, data):
    cfg = TrainConfig(model="tiny", epochs=1, batch_size=64)
    data = [d.subset(range(64)) for d in data]
    a = train_model(cfg, *data, out=tmp_path / "a.pt", device="cpu", progress=False)
    b = train_model(cfg, *data, out=tmp_path / "b.pt", device="cpu", progress=False)
    assert a["sha256"] == b["sha256"]


def test_checkpoint_of_another_architecture_is_a_clear_error(trained):
    with pytest.raises(BenchError, match="is for architecture 'tiny', not 'resnet18'"):
        load_checkpoint(trained[0], expected_model="resnet18")


def test_checkpoint_whose_weights_do_not_fit(tmp_path, trained):
    ckpt = torch.load(trained[0], weights_only=True)
    ckpt["model"] = "resnet18"
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(BenchError, match="does not fit architecture 'resnet18'"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("content,match", [(b"not a checkpoint at all", "cannot be read"), (None, "not found")])
def test_corrupt_or_missing_checkpoint(tmp_path, content, match):
    p = tmp_path / "x.pt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(BenchError, match=match) as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value)


def test_truncated_checkpoint(tmp_path, trained):
    raw = trained[0].read_bytes()
    p = tmp_path / "trunc.pt"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BenchError, match="cannot be read"):
        load_checkpoint(p)


def test_foreign_torch_file(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(BenchError, match="not a pneumobench checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_tune_keeps_frozen_parameters_and_buffers_bitwise(tmp_path, trained, data):
    parent, _ = trained
    before, _ = load_checkpoint(parent)
    unfreeze = ("fc", "layer2")
    frozen_before = frozen_state(before, unfreeze)
    side = tune_model(
        parent,
        TuneConfig(unfreeze=unfreeze, epochs=2, batch_size=32, lr=5e-2),
        *data,
        out=tmp_path / "post.pt",
        device="cpu",
        progress=False,
    )
    after, info = load_checkpoint(tmp_path / "post.pt")
    assert info["stage"] == "post"
    frozen_after = frozen_state(after, unfreeze)
    assert frozen_before.keys() == frozen_after.keys() and len(frozen_before) > 0
    for k in frozen_before:
        assert torch.equal(frozen_before[k], frozen_after[k]), k
    # and the unfrozen part did train
    assert not torch.equal(before.fc.weight, after.fc.weight)
    c = side["comparison"]
    assert c["parent"]["sha256"] == trained[1]["sha256"]
    assert set(c["delta"]) >= {"acc", "auc", "sensitivity", "specificity"}
    assert c["delta"]["acc"] == pytest.approx(side["test"]["acc"] - trained[1]["test"]["acc"])
    moves = c["cell_moves"]
    assert sum(sum(r.values()) for r in moves.values()) == len(data[2])
    assert c["images_changed_cell"] == sum(v for a, r in moves.items() for b, v in r.items() if a != b)


def test_tune_rejects_unknown_block(tmp_path, trained, data):
    with pytest.raises(
        BenchError,
        match="cannot unfreeze layer9: .* no such top-level module; its modules with parameters are .*tune.unfreeze",
    ):
        tune_model(
            trained[0],
            TuneConfig(unfreeze=("layer9",), epochs=1),
            *data,
            out=tmp_path / "p.pt",
            device="cpu",
            progress=False,
        )


def test_predict_outputs_logits_and_probabilities(data):
    """Batched logits equal one forward pass; probabilities are their softmax; the mode is restored."""
    from models import build_model

    torch.manual_seed(0)
    model = build_model("tiny").train()
    images = data[2].images[:7]
    logits = predict_outputs(model, images, batch_size=3)
    assert model.training  # restored
    with torch.no_grad():
        torch.testing.assert_close(logits, model.eval()(images))
    torch.testing.assert_close(predict_outputs(model, images, space="probability"), logits.softmax(1))
    torch.testing.assert_close(predict_proba(model, images), logits.softmax(1))
    with pytest.raises(BenchError, match="unknown output space 'logits'; use one of logit, probability"):
        predict_outputs(model, images, space="logits")


@pytest.mark.parametrize(
    "field,value",
    [
        ("epochs", 0),
        ("lr", -1.0),
        ("optimizer", "rmsprop"),
        ("momentum", 1.5),
        ("batch_size", 0),
        ("select_on", "test_acc"),
        ("class_weighting", "x"),
    ],
)
def test_bad_recipe_values(field, value):
    with pytest.raises(BenchError, match=field.split("_")[0]):
        TrainConfig(model="tiny", **{field: value}).validate()


def test_progress_bars_and_epoch_lines(tmp_path, data, capsys):
    """The default (interactive) path: progress bars on, one summary line per epoch."""
    small = [d.subset(range(32)) for d in data]
    train_model(
        TrainConfig(model="tiny", epochs=2, batch_size=16), *small, out=tmp_path / "p.pt", device="cpu", progress=True
    )
    captured = capsys.readouterr()
    assert "tiny epoch 1/2: train loss" in captured.out and "tiny epoch 2/2: train loss" in captured.out


def test_a_run_whose_every_validation_score_is_nan_is_a_clear_error(tmp_path, data, monkeypatch):
    """A loss that diverged from the first epoch scores NaN on val every epoch, and NaN > -inf never
    holds: no epoch is kept. That is a one-line BenchError, not load_state_dict(None)'s TypeError,
    and no checkpoint is written."""
    import models.training as training

    monkeypatch.setattr(training, "_selection_score", lambda metrics, select_on: float("nan"))
    small = [d.subset(range(32)) for d in data]
    with pytest.raises(BenchError, match="no epoch gave a finite validation score .val_loss was NaN in all 2 epochs."):
        train_model(
            TrainConfig(model="tiny", epochs=2, batch_size=16),
            *small,
            out=tmp_path / "nan.pt",
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "nan.pt").exists()
