"""The test suite names its devices: train.device=auto is refused in tests (conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslext.app.config import ConfigError, load_config
from sslext.train import Trainer, resolve_device

REPO = Path(__file__).resolve().parents[1]


def test_a_trainer_left_at_auto_fails_in_tests(tmp_path):
    cfg = load_config(None, ["data.dataset=synthetic", f"train.out_dir={tmp_path}", "model.backbone=resnet10"])
    assert cfg["train"]["device"] == "auto"
    with pytest.raises(ConfigError, match="train.device: 'auto' in a test"):
        Trainer(cfg)


def test_processes_started_by_tests_refuse_auto_too(tmp_path):
    """CLI runs, spawned ranks and sweep cells inherit the guard."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sslext.train",
            "--set",
            "data.dataset=synthetic",
            "--set",
            f"train.out_dir={tmp_path}",
            "--set",
            "train.epochs=1",
            "--set",
            "optim.warmup_epochs=0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.returncode != 0 and "train.device: 'auto' in a test" in p.stderr, p.stderr[-2000:]


@pytest.mark.device_auto
def test_auto_resolves_to_cuda_when_there_is_one():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
