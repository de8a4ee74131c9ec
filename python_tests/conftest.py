"""Shared fixtures, markers and the per-dtype tolerance table."""

import multiprocessing
import os

import pytest
import torch

import sslext  # noqa: F401  (loads the ops)

# The emulated-CUDA suite (python_tests/emulated, docs/dev/emulator.md) needs the
# emulated build loaded: make test-emulated runs it with SSLEXT_EMULATED=1.
EMULATED = os.environ.get("SSLEXT_EMULATED") == "1"
collect_ignore = [] if EMULATED else ["emulated"]

# One table for every comparison against the float64 reference.
# forward: relative error of the scalar loss; grad: elementwise rtol with an
# atol scaled by the gradient's largest entry (entries near zero carry no
# relative information).
TOLERANCES = {
    torch.float32: {"forward_rtol": 1e-5, "grad_rtol": 1e-4, "grad_atol_scale": 1e-5},
    torch.float64: {"forward_rtol": 1e-12, "grad_rtol": 1e-10, "grad_atol_scale": 1e-12},
}

HAS_CUDA = torch.cuda.is_available() and sslext.build_info()["with_cuda"]

# Every Trainer a test builds names its device: train.device=auto raises
# (sslext.app.training.build.resolve_device), in this process and in the
# processes it starts (CLI runs, spawned ranks, sweep cells). Left at auto,
# a test would train on CUDA on a GPU machine against CPU expectations.
# Tests about auto itself are marked device_auto.
os.environ["SSLEXT_TEST_FORBID_AUTO_DEVICE"] = "1"


@pytest.fixture(autouse=True)
def _forbid_auto_device(request, monkeypatch):
    if "device_auto" in request.keywords:
        monkeypatch.delenv("SSLEXT_TEST_FORBID_AUTO_DEVICE", raising=False)
    else:
        monkeypatch.setenv("SSLEXT_TEST_FORBID_AUTO_DEVICE", "1")


DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device and sslext built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """train.amp=auto caches CPU measurements; tests never touch the user's cache folder."""
    old = os.environ.get("SSLEXT_CACHE_DIR")
    os.environ["SSLEXT_CACHE_DIR"] = str(tmp_path_factory.mktemp("sslext-cache"))
    yield
    if old is None:
        os.environ.pop("SSLEXT_CACHE_DIR", None)
    else:
        os.environ["SSLEXT_CACHE_DIR"] = old


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def assert_grad_close(actual, expected, dtype=torch.float32):
    tol = TOLERANCES[dtype]
    scale = expected.abs().max().item()
    torch.testing.assert_close(
        actual.double(),
        expected.double(),
        rtol=tol["grad_rtol"],
        atol=tol["grad_atol_scale"] * max(scale, 1e-30),
    )


def assert_forward_close(actual, expected, dtype=torch.float32):
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol["forward_rtol"], atol=0.0)


if EMULATED:
    import subprocess
    import sys
    from pathlib import Path

    _HERE = Path(__file__).resolve().parent

    def pytest_report_header(config):
        seed = torch.ops.sslext_emu.seed()
        return f"sslext emulated CUDA: block order seed {seed} (SSLEXT_EMU_SEED={seed} replays it)"

    @pytest.fixture(scope="session", autouse=True)
    def _emulated_build_loaded():
        assert sslext.build_info()["emulated_cuda"], "SSLEXT_EMULATED=1 must load sslext/_C_emu.so"

    @pytest.fixture(scope="session")
    def cpu_results(tmp_path_factory):
        """The CPU build's side of the emulated parity matrix, computed in a subprocess
        (one process cannot load both builds: both register the sslext library)."""
        out = tmp_path_factory.mktemp("cpu") / "cpu.pt"
        env = {k: v for k, v in os.environ.items() if k not in ("SSLEXT_EMULATED", "SSLEXT_EMU_LIBRARY")}
        paths = [str(_HERE / "emulated"), str(_HERE), str(_HERE.parent), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        script = _HERE / "emulated" / "parity_cases.py"
        subprocess.run([sys.executable, str(script), str(out)], cwd=_HERE.parent, env=env, check=True)
        return torch.load(out)


def pytest_sessionfinish(session, exitstatus):
    """A child process left running (a DataLoader worker, a spawned rank) can keep the interpreter
    from exiting after the summary: CI then waits until its time limit, with no test named.
    Stop such children here and fail the session, naming them."""
    left = multiprocessing.active_children()
    if not left:
        return
    for p in left:
        p.kill()
        p.join(timeout=10)
    names = ", ".join(f"{p.name} (pid {p.pid})" for p in left)
    print(f"\nconftest: child processes outlived the tests and were killed: {names}")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
