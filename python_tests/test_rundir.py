"""A run never destroys another: starting where a run exists needs --resume or --overwrite."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslext.app.config import load_config
from sslext.app.training.rundir import RunExistsError, describe_run, prepare_run_dir
from sslext.train import main, train

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.dataset=synthetic",
    "model.backbone=resnet10",
    "model.width=8",
    "optim.batch_size=64",
    "optim.warmup_epochs=0",
    "train.threads=2",
    "train.progress=false",
    "eval.final=false",
    "eval.online_probe=false",
    "eval.every=100",
    "augment.view1.crop_size=16",
    "augment.view2.crop_size=16",
    "method.projector=[16,16]",
    "name=run",
    "train.device=cpu",
    "train.amp=false",
]


def _args(out, epochs):
    return [a for o in TINY + [f"train.out_dir={out}", f"train.epochs={epochs}"] for a in ("--set", o)]


def _state(run):
    ck = torch.load(run / "last.pt", weights_only=True)
    return ck["epoch"], ck["global_step"], (run / "metrics.jsonl").read_text()


def test_cli_refuses_then_resume_and_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(tmp_path, 1)) == 0
    before = _state(run)
    assert before[:2] == (1, 4)  # 256 synthetic images, batch 64
    capsys.readouterr()

    # The same command again: refused, nothing touched.
    assert main(_args(tmp_path, 1)) == 1
    err = capsys.readouterr().err
    assert str(run) in err and "1 of 1 epochs done" in err and "step 4" in err and "finished" in err
    assert "--resume" in err and "--overwrite" in err
    assert _state(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

    # --resume continues it (here: to 2 epochs).
    with pytest.warns(UserWarning, match="train.epochs"):  # a longer schedule than the checkpoint's
        assert main(_args(tmp_path, 2) + ["--resume"]) == 0
    assert _state(run)[:2] == (2, 8)
    capsys.readouterr()

    # --overwrite moves the old run aside, whole, and starts afresh.
    old = _state(run)
    assert main(_args(tmp_path, 1) + ["--overwrite"]) == 0
    err = capsys.readouterr().err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and str(aside[0]) in err
    assert _state(aside[0]) == old
    assert _state(run)[:2] == (1, 4)

    # Both flags: a usage error before anything happens.
    assert main(_args(tmp_path, 1) + ["--overwrite", "--resume"]) == 1
    assert "choose one" in capsys.readouterr().err


def test_library_api_same_rule(tmp_path):
    cfg = load_config(None, TINY + [f"train.out_dir={tmp_path}", "train.epochs=1"])
    s = train(cfg)
    assert s["finished"]
    with pytest.raises(RunExistsError, match="1 of 1 epochs done"):
        train(cfg)
    s2 = train(cfg, overwrite=True)
    assert s2["finished"] and s2.get("moved_aside")
    assert Path(s2["moved_aside"]).is_dir() and (Path(s2["moved_aside"]) / "last.pt").is_file()


def test_cli_subprocess_exit_code_and_message(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 4, "step": 50}) + "\n")
    p = subprocess.run(
        [sys.executable, "-m", "sslext.train", *_args(tmp_path, 1)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert p.returncode == 1
    assert "already holds a run with 5 epochs done (step 50)" in p.stderr and "metrics.jsonl" in p.stderr
    assert (run / "metrics.jsonl").read_text().count("\n") == 1


def test_what_counts_as_a_run(tmp_path):
    d = tmp_path / "r"
    assert describe_run(d) is None and prepare_run_dir(d) is None
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    assert describe_run(d) is None and prepare_run_dir(d) is None  # a folder without run files is free
    (d / "config.yaml").write_text("name: r\n")
    assert "run of unknown progress" in describe_run(d) and "config.yaml" in describe_run(d)
    with pytest.raises(RunExistsError):
        prepare_run_dir(d)
    assert prepare_run_dir(d, resume=True) is None and (d / "config.yaml").is_file()
    a = prepare_run_dir(d, overwrite=True)
    b_dir = tmp_path / "r"
    b_dir.mkdir()
    (b_dir / "report.md").write_text("x")
    b = prepare_run_dir(b_dir, overwrite=True)  # same second: a distinct name, nothing clobbered
    assert a != b and (a / "notes.txt").read_text() == "mine" and (b / "report.md").is_file()
    assert not b_dir.exists()
    with pytest.raises(ValueError, match="choose one"):
        prepare_run_dir(d, resume=True, overwrite=True)
