"""The emulated suite: collected only when SSLEXT_EMULATED=1 (python_tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sslext

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def pytest_report_header(config):
    seed = torch.ops.sslext_emu.seed()
    return f"sslext emulated CUDA: block order seed {seed} (SSLEXT_EMU_SEED={seed} replays it)"


@pytest.fixture(scope="session", autouse=True)
def _emulated():
    assert sslext.build_info()["emulated_cuda"], "SSLEXT_EMULATED=1 must load sslext/_C_emu.so"


@pytest.fixture(scope="session")
def cpu_results(tmp_path_factory):
    """The CPU build's side of the parity matrix, computed in a subprocess."""
    out = tmp_path_factory.mktemp("cpu") / "cpu.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("SSLEXT_EMULATED", "SSLEXT_EMU_LIBRARY")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), str(ROOT), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, str(HERE / "parity_cases.py"), str(out)], cwd=ROOT, env=env, check=True)
    return torch.load(out)
