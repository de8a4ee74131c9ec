"""benchmarks/gpu_check.sh takes its inputs as arguments (dry-run mode, any machine)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "SSLEXT_GPU_CHECK_DATA"}
    e.update({"SSLEXT_GPU_CHECK_DRY_RUN": "1", **(env or {})})
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=e, timeout=120)


def test_outdir_only_skips_the_data_steps(tmp_path):
    p = _run(tmp_path / "out")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    assert "pytest python_tests" in p.stdout and "throughput and training steps skipped" in p.stdout
    assert {f.name for f in out.iterdir()} <= {"build.log", "tests.log", "memcheck.log", "racecheck.log",
                                               "train.log"}


@pytest.mark.parametrize("how", ["argument", "env"])
def test_data_dir_is_used_for_throughput_and_training(tmp_path, how):
    data = tmp_path / "my data"
    (data / "cifar-10-batches-py").mkdir(parents=True)
    if how == "argument":
        p = _run(tmp_path / "out", data)
    else:
        p = _run(tmp_path / "out", env={"SSLEXT_GPU_CHECK_DATA": str(data)})
    assert p.returncode == 0, p.stderr
    assert f"--data {data}" in p.stdout
    assert f"data.root={data}" in p.stdout and f"train.out_dir={REPO / 'runs' / 'gpu_check'}" in p.stdout
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == [
        "build.log", "memcheck.log", "racecheck.log", "tests.log", "train.log"]


def test_missing_data_dir_is_an_error(tmp_path):
    p = _run(tmp_path / "out", tmp_path / "nope")
    assert p.returncode == 2 and "DATA_DIR" in p.stderr and "nope" in p.stderr


def test_no_outdir_prints_usage():
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "usage: gpu_check.sh OUTDIR [DATA_DIR]" in p.stderr
