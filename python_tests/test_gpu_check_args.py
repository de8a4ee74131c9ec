"""benchmarks/gpu_check.sh: its arguments, its plan inside the deadline (dry-run mode, any machine),
its preflight's checks, and bench_losses.py leaving its rows when a time limit interrupts it."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_preflight  # noqa: E402

STEPS = [
    "preflight",
    "build",
    "build_info",
    "op_tests",
    "bench_losses",
    "memcheck",
    "racecheck",
    "trainer_tests",
    "train_vicreg",
]
OUT_FILES = {
    "build.log",
    "tests.log",
    "losses.json",
    "losses.md",
    "memcheck.log",
    "racecheck.log",
    "train.log",
    "summary.txt",
}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("SSLEXT_GPU_CHECK_DATA", "SSLEXT_GPU_CHECK_DEADLINE")}
    e.update({"SSLEXT_GPU_CHECK_DRY_RUN": "1", **(env or {})})
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=e, timeout=120)


def test_outdir_only_skips_the_data_steps(tmp_path):
    p = _run(tmp_path / "out")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    assert "pytest" in p.stdout and "training step skipped" in p.stdout
    assert {f.name for f in out.iterdir()} <= OUT_FILES


@pytest.mark.parametrize("how", ["argument", "env"])
def test_data_dir_is_used_for_throughput_and_training(tmp_path, how):
    data = tmp_path / "my data"
    (data / "cifar-10-batches-py").mkdir(parents=True)
    if how == "argument":
        p = _run(tmp_path / "out", data)
    else:
        p = _run(tmp_path / "out", env={"SSLEXT_GPU_CHECK_DATA": str(data)})
    assert p.returncode == 0, p.stderr
    assert f"data.root={data}" in p.stdout and f"train.out_dir={REPO / 'runs' / 'gpu_check'}" in p.stdout
    assert {f.name for f in (tmp_path / "out").iterdir()} <= OUT_FILES


def test_missing_data_dir_is_an_error(tmp_path):
    p = _run(tmp_path / "out", tmp_path / "nope")
    assert p.returncode == 2 and "DATA_DIR" in p.stderr and "nope" in p.stderr


def test_no_outdir_prints_usage():
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "usage: gpu_check.sh OUTDIR [DATA_DIR]" in p.stderr


def _plan(stdout):
    """{step: (start, limit, cap, end)} from the dry run's plan lines."""
    found = re.findall(
        r"^plan: (\w+) starts by (-?\d+)s, limit (-?\d+)s \(cap (\d+)s\), ends by (-?\d+)s", stdout, re.M
    )
    return {name: tuple(map(int, rest)) for name, *rest in found}


@pytest.mark.parametrize("with_data", [False, True])
def test_dry_run_plans_every_step_inside_480_s(tmp_path, with_data):
    """Every step, each given its whole limit plus the kill grace, ends by the default deadline."""
    data = tmp_path / "data"
    (data / "cifar-10-batches-py").mkdir(parents=True)
    p = _run(tmp_path / "out", *([data] if with_data else []))
    assert p.returncode == 0, p.stdout + p.stderr
    plan = _plan(p.stdout)
    assert list(plan) == STEPS, p.stdout
    ends = [end for _, _, _, end in plan.values()]
    assert all(limit == cap > 0 for _, limit, cap, _ in plan.values()), plan  # no step shortened
    assert ends == sorted(ends) and ends[-1] <= 480, plan
    starts = [start for start, _, _, _ in plan.values()]
    assert starts[1:] == ends[:-1]  # the next step starts when the last one may have ended
    assert "plan fits" in p.stdout and len(OUT_FILES) <= 8


def test_dry_run_refuses_a_plan_that_does_not_fit(tmp_path):
    p = _run(tmp_path / "out", env={"SSLEXT_GPU_CHECK_DEADLINE": "300"})
    assert p.returncode == 1 and "does not fit" in p.stderr
    p = _run(tmp_path / "out", env={"SSLEXT_GPU_CHECK_DEADLINE": "soon"})
    assert p.returncode == 2 and "SSLEXT_GPU_CHECK_DEADLINE" in p.stderr


def test_the_script_holds_the_issue_17_rules():
    """What the dry run cannot show: the order of value, the sanitizer filter and allocator, the build stop."""
    text = SCRIPT.read_text()
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING=1" in text and text.count("--kernel-name kns=sslext") == 2
    assert re.search(r"build failed.*exit 1", text) and re.search(r"preflight failed.*exit 2", text)
    assert "--no-compile" in text and "test_cuda_training.py -k cuda" in text


def _facts(**over):
    facts = {
        "torch_version": "2.11.0+cu130",
        "torch_cuda": "13.0",
        "device": "NVIDIA H200 (compute capability 9.0)",
        "nvcc": "/usr/local/cuda/bin/nvcc",
        "nvcc_version": "13.0",
        "sanitizer": "/usr/local/cuda/bin/compute-sanitizer",
        "modules": {m: "1.0" for m in gpu_preflight.PY_MODULES},
    }
    facts.update(over)
    return facts


def test_preflight_passes_the_gpu_machine():
    ok, missing = gpu_preflight.check(_facts())
    assert missing == [] and len(ok) == 3 + len(gpu_preflight.PY_MODULES)


@pytest.mark.parametrize(
    "over,says",
    [
        ({"torch_version": None}, "torch: not importable"),
        ({"torch_cuda": None}, "CPU-only build"),
        ({"device": None}, "sees no CUDA device"),
        ({"nvcc": None, "nvcc_version": None}, "nvcc: not in CUDA_HOME/bin or on PATH"),
        ({"nvcc_version": "12.8"}, "nvcc is CUDA 12.8 but torch was built with CUDA 13.0"),
        ({"sanitizer": None}, "compute-sanitizer: not on PATH"),
        ({"modules": {**{m: "1.0" for m in gpu_preflight.PY_MODULES}, "hypothesis": None}}, "hypothesis"),
    ],
)
def test_preflight_names_what_is_missing(over, says):
    _, missing = gpu_preflight.check(_facts(**over))
    assert len(missing) == 1 and says in missing[0], missing


def test_preflight_finds_the_sanitizer_under_cuda_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_preflight.find_sanitizer(str(tmp_path)) is None
    exe = tmp_path / "compute-sanitizer" / "compute-sanitizer"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert gpu_preflight.find_sanitizer(str(tmp_path)) == str(exe)


def test_bench_losses_leaves_its_rows_when_interrupted(tmp_path):
    """SIGINT (what timeout sends at a step's limit) after the first rows: the files hold them."""
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "bench_losses.py"),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--losses",
        "vicreg,barlow_twins,tico,vicreg_tico",
        "--shapes",
        ",".join(["8x16", "16x8"] * 20),
        "--modes",
        "forward",
        "--repeats",
        "20",
        "--warmup",
        "1",
        "--no-memory",
        "--no-compile",
        "--no-plot",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        rows = []
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                rows = json.loads((out / "losses.json").read_text())["results"]
            except (OSError, ValueError):
                rows = []
            if len(rows) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the benchmark ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    saved = json.loads((out / "losses.json").read_text())
    n = len(saved["results"])
    assert 3 <= n < 4 * 40 * 5, n  # interrupted after the first rows, before the 800th (5 peers)
    assert f"interrupted: {n} rows" in output
    assert saved["env"]["repeats"] == 20 and all(r["median_s"] > 0 for r in saved["results"])
    assert not any(r["peer"] == "reference+compile" for r in saved["results"])
    md = (out / "losses.md").read_text()
    assert md.count("| vicreg") + md.count("| barlow") + md.count("| tico") == n
    assert not (out / "losses.png").exists() and not list(out.glob("*.tmp*"))
