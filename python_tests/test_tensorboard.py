"""train.loggers: TensorBoard events written by a tiny run, read back with tensorboard's EventAccumulator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslext.app.config import ConfigError, load_config
from sslext.train import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke_synthetic.yaml"
TB = "train.loggers=[jsonl, csv, tensorboard]"


def events(run_dir):
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def scalars(ea, tag):
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def test_a_tiny_run_writes_every_metric(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(SMOKE, [f"train.out_dir={tmp_path}", "train.device=cpu", "train.log_every=1", TB])
    train(cfg)
    run = tmp_path / "smoke_synthetic"
    assert list(run.glob("events.out.tfevents.*"))
    ea = events(run)
    tags = set(ea.Tags()["scalars"])
    steps = records(run, "step")
    assert len(steps) == 4
    # Step scalars: the loss, every loss term, the lr, the online probe's loss, at each logged step.
    for key in ("loss", "invariance", "variance", "covariance", "lr", "probe_loss"):
        got = scalars(ea, f"train/{key}")
        assert [s for s, _ in got] == [r["step"] for r in steps], key
        assert [v for _, v in got] == pytest.approx([r[key] for r in steps], rel=1e-6), key
    # Epoch metrics: kNN, online probe, RankMe and the other diagnostics, at the step the epoch ended.
    (epoch,) = records(run, "epoch")
    for key in ("knn_acc", "online_probe_acc", "backbone_rankme", "projector_rankme", "loss", "images_per_second"):
        assert scalars(ea, f"epoch/{key}") == [(epoch["step"], pytest.approx(epoch[key], rel=1e-6))], key
    final = json.loads((run / "final_eval.json").read_text())
    for key in ("linear_acc", "knn_acc", "backbone_rankme"):
        assert scalars(ea, f"final/{key}") == [(4, pytest.approx(final[key], rel=1e-6))], key
    assert not [t for t in tags if not t.startswith(("train/", "epoch/", "final/"))]
    # The singular-value spectra, as PNG images.
    assert set(ea.Tags()["images"]) == {"spectrum", "final/spectrum"}
    img = ea.Images("spectrum")[0]
    assert img.step == 4 and img.encoded_image_string.startswith(b"\x89PNG") and img.width > 100


def test_default_loggers_and_without_csv(tmp_path):
    cfg = load_config(SMOKE, [f"train.out_dir={tmp_path}", "train.device=cpu", "eval.final=false"])
    assert cfg["train"]["loggers"] == ["jsonl", "csv"]
    train(cfg)
    run = tmp_path / "smoke_synthetic"
    assert (run / "metrics.csv").is_file() and not list(run.glob("events.out.tfevents.*"))
    cfg = load_config(
        SMOKE,
        [f"train.out_dir={tmp_path}", "name=nocsv", "train.device=cpu", "eval.final=false", "train.loggers=[jsonl]"],
    )
    train(cfg)
    assert (tmp_path / "nocsv" / "metrics.jsonl").is_file() and not (tmp_path / "nocsv" / "metrics.csv").exists()


@pytest.mark.parametrize("value", ["[csv]", "[jsonl, jsonl]", "[jsonl, wandb]", "jsonl", "[jsonl, 3]"])
def test_bad_loggers_name_the_key(value):
    with pytest.raises(ConfigError, match="train.loggers"):
        load_config(SMOKE, [f"train.loggers={value}"])


def test_missing_tensorboard_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"train.loggers: 'tensorboard' needs .*pip install 'sslext\[tensorboard\]'"):
        load_config(SMOKE, [TB])
    from sslext.app.training.tensorboard import require_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'sslext\[tensorboard\]'"):
        require_tensorboard()


def test_resume_after_a_kill_leaves_no_duplicate_points(tmp_path):
    # Checkpoint at step 2; steps 3-4 and epoch 0's record are logged (and flushed),
    # then SIGKILL before epoch 0's checkpoint. The resumed run redoes steps 3-8.
    args = [
        sys.executable,
        "-m",
        "sslext.train",
        "--config",
        str(SMOKE),
        "--set",
        f"train.out_dir={tmp_path}",
        "--set",
        "train.device=cpu",
        "--set",
        "train.log_every=1",
        "--set",
        "train.epochs=2",
        "--set",
        "train.checkpoint_every_steps=2",
        "--set",
        "eval.final=false",
        "--set",
        TB,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "SSLEXT_TEST_FAULT": "kill:epoch:0",
    }
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == -9, first.stderr[-2000:]
    run = tmp_path / "smoke_synthetic"
    assert scalars(events(run), "train/loss")[-1][0] == 4  # written before the kill
    del env["SSLEXT_TEST_FAULT"]
    second = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    ea = events(run)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    steps = records(run, "step")
    got = scalars(ea, "train/loss")
    assert [s for s, _ in got] == [r["step"] for r in steps] == list(range(1, 9))
    assert [v for _, v in got] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert [s for s, _ in scalars(ea, "epoch/loss")] == [4, 8]
