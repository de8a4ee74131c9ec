"""Surviving interruptions and hostile checkpoints.

Real ``python -m sslext.train`` processes are killed with SIGKILL at chosen
points (mid-step, mid-checkpoint-write, between an epoch's log record and its
checkpoint) and at a random time, or stopped with SIGTERM/SIGINT; each is
resumed with ``--resume`` until done, and the result must equal an
uninterrupted run bit-for-bit: every tensor of last.pt and every step/epoch
record of metrics.jsonl. The fault points come from the test hook
``SSLEXT_TEST_FAULT`` (see ``sslext.train._FaultInjector``).
"""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_e2e import TINY

from sslext.app.config import load_config
from sslext.train import (
    EXIT_INTERRUPTED,
    CheckpointMismatchError,
    NonFiniteLossError,
    Trainer,
    load_checkpoint_file,
    main,
)

ROOT = Path(__file__).resolve().parent.parent
# tico: the running covariance C is loss state updated in the forward pass.
# 128 images, batch 32: 4 steps per epoch, 12 in all; only the last epoch is evaluated (CPU time). One
# thread: on a machine shared with other jobs, OpenMP threads spin and multiply the CPU time (measured 20x).
RUN = [
    "method.name=tico",
    "method.hidden_dim=32",
    "method.out_dim=16",
    "train.epochs=3",
    "eval.final=false",
    "train.checkpoint_every_steps=3",
    *TINY,
    "data.train_limit=128",
    "eval.every=100",
    "train.threads=1",
]
TIMING = {"train_seconds", "images_per_second"}


def _cfg(out_dir, *extra):
    return load_config(None, [*RUN, f"train.out_dir={out_dir}", "name=run", *extra])


def _records(run_dir, kinds=("step", "epoch")):
    recs = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs if r["kind"] in kinds]


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _assert_same_run(ref_dir, run_dir):
    assert _records(run_dir) == _records(ref_dir)
    a, b = load_checkpoint_file(ref_dir / "last.pt"), load_checkpoint_file(run_dir / "last.pt")
    for k in (
        "method",
        "optimizer",
        "scheduler",
        "probe",
        "probe_opt",
        "augment",
        "torch_rng",
        "epoch",
        "step_in_epoch",
        "global_step",
        "epoch_acc",
    ):
        _assert_same(a[k], b[k], k) if k != "epoch_acc" else _assert_same(
            {x: y for x, y in a[k].items() if x != "seconds"}, {x: y for x, y in b[k].items() if x != "seconds"}, k
        )
    assert not list(run_dir.glob(".*.tmp")), "stale temp files left behind"


def _cli(out_dir, *extra):
    args = [sys.executable, "-m", "sslext.train"]
    for o in [*RUN, f"train.out_dir={out_dir}", "name=run", *extra]:
        args += ["--set", o]
    return args


def _spawn(out_dir, resume, fault=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SSLEXT_TEST_FAULT", None)
    if fault:
        env["SSLEXT_TEST_FAULT"] = fault
    return subprocess.Popen(
        _cli(out_dir) + (["--resume"] if resume else []),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(out_dir, resume, fault=None):
    p = _spawn(out_dir, resume, fault)
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (3 epochs x 4 steps), in this process."""
    d = tmp_path_factory.mktemp("ref")
    s = Trainer(_cfg(d)).fit()
    assert s["finished"] and s["global_step"] == 12
    return d / "run"


def test_sigkill_at_many_points_resumes_exactly(tmp_path, reference):
    run = tmp_path / "run"
    # (fault, global step of last.pt afterwards): checkpoints at steps 3, 6, 9 and at each epoch end (4, 8, 12).
    faults = [
        ("kill:step:5", 4),  # mid-step: optimizer stepped, record not yet logged
        ("kill:save:6", 4),  # inside atomic_save: temp file torn, os.replace never ran
        ("kill:epoch:1", 6),  # epoch 1 logged, its checkpoint not written
        ("kill:save:9", 8),
        ("kill:step:11", 9),
    ]
    for i, (fault, ckpt_step) in enumerate(faults):
        rc, _, err = _run(tmp_path, resume=i > 0, fault=fault)
        assert rc == -signal.SIGKILL, (fault, rc, err[-2000:])
        assert load_checkpoint_file(run / "last.pt")["global_step"] == ckpt_step, fault
        if fault.startswith("kill:save"):
            assert list(run.glob(".last.pt.*.tmp")), "the torn temp file should be left by the kill"
    # A random moment: an external SIGKILL a seeded random delay after training resumed
    # (the last steps, the final evaluation, the last checkpoint or the report).
    p = _spawn(tmp_path, resume=True)
    n_resumes = len(_records(run, ("resume",)))
    while p.poll() is None and len(_records(run, ("resume",))) == n_resumes:
        time.sleep(0.01)
    time.sleep(random.Random(1234).uniform(0.0, 0.6))
    p.kill()
    p.communicate()
    rc = None
    for _ in range(3):  # until finished (the random kills may have landed anywhere, even after the end)
        rc, out, err = _run(tmp_path, resume=True)
        assert rc == 0, err[-2000:]
        if json.loads(out)["finished"]:
            break
    _assert_same_run(reference, run)
    resumes = _records(run, ("resume",))
    assert len(resumes) >= len(faults)


def test_sigterm_sigint_stop_cleanly_and_resume_exactly(tmp_path, reference):
    run = tmp_path / "run"
    rc, _, err = _run(tmp_path, resume=False, fault="term:step:3")
    assert rc == EXIT_INTERRUPTED, err[-2000:]
    assert "SIGTERM" in err and "--resume" in err
    ck = load_checkpoint_file(run / "last.pt")
    assert ck["global_step"] == 3 and ck["step_in_epoch"] == 3  # the step finished, then a checkpoint
    # SIGINT at the last step of epoch 1: saved before that epoch's record, which the resume writes.
    rc, _, err = _run(tmp_path, resume=True, fault="int:step:8")
    assert rc == EXIT_INTERRUPTED, err[-2000:]
    ck = load_checkpoint_file(run / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (1, 4)
    # A real external SIGTERM while training.
    p = _spawn(tmp_path, resume=True)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if any(r["kind"] == "step" and r["step"] >= 9 for r in _records(run)):
            p.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = p.communicate(timeout=120)
    assert p.returncode == EXIT_INTERRUPTED, err[-2000:]
    sig = _records(run, ("signal",))
    assert [s["signal"] for s in sig] == ["SIGTERM", "SIGINT", "SIGTERM"]
    rc, out, err = _run(tmp_path, resume=True)
    assert rc == 0 and json.loads(out)["finished"], err[-2000:]
    _assert_same_run(reference, run)


def test_signal_in_process_returns_and_restores_handlers(tmp_path, monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setenv("SSLEXT_TEST_FAULT", "int:step:3")
    tr = Trainer(_cfg(tmp_path, "train.epochs=1"))
    s = tr.fit()
    assert s["interrupted"] == "SIGINT" and not s["finished"] and s["global_step"] == 3
    assert {s: signal.getsignal(s) for s in before} == before
    assert load_checkpoint_file(tmp_path / "run" / "last.pt")["global_step"] == 3
    # A second signal while stopping: the user insists, stop at once (KeyboardInterrupt for SIGINT).
    tr._install_signal_handlers()
    try:
        tr._on_signal(signal.SIGINT, None)
        assert tr._stop_requested() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            tr._on_signal(signal.SIGINT, None)
    finally:
        tr._restore_signal_handlers()
    assert {s: signal.getsignal(s) for s in before} == before


# ----------------------------------------------------------------- non-finite steps
def _nan_at(method, calls):
    """Make the loss NaN on the given forward calls (1-based)."""
    orig, n = method.compute_loss, {"i": 0}

    def bad(z):
        n["i"] += 1
        loss, terms = orig(z)
        return (loss * float("nan") if n["i"] in calls else loss), terms

    method.compute_loss = bad


def _nan_grad_at(method, calls):
    """Loss finite, but a NaN gradient on the given backward calls (1-based)."""
    p, n = next(method.projector.parameters()), {"i": 0}

    def hook(g):
        n["i"] += 1
        return g * float("nan") if n["i"] in calls else g

    p.register_hook(hook)


SKIP = ["train.on_nonfinite=skip", "train.epochs=2", "train.checkpoint_every_steps=null"]


@pytest.mark.parametrize(
    "method,inject,what",
    [("tico", _nan_at, "loss"), ("vicreg_tico", _nan_grad_at, "gradients"), ("vicreg", _nan_grad_at, "gradients")],
)
def test_skip_leaves_no_trace(tmp_path, method, inject, what):
    head = ["method.hidden_dim=32", "method.out_dim=16"] if method == "tico" else ["method.projector=[32,32]"]
    cfg = lambda d, *x: load_config(
        None, [*RUN, f"method.name={method}", *head, f"train.out_dir={d}", "name=run", *SKIP, *x]
    )
    Trainer(cfg(tmp_path / "a", "train.max_steps=2")).fit()
    tr = Trainer(cfg(tmp_path / "b", "train.max_steps=3"))
    inject(tr.method, {3})
    tr.fit()
    a = load_checkpoint_file(tmp_path / "a" / "run" / "last.pt")
    b = load_checkpoint_file(tmp_path / "b" / "run" / "last.pt")
    # The skipped step changed nothing: weights, BatchNorm statistics, TiCo's C,
    # optimizer, schedule, probe (only the data position and RNG moved on).
    for k in ("method", "optimizer", "scheduler", "probe", "probe_opt"):
        _assert_same(a[k], b[k], k)
    assert b["global_step"] == 3 and b["epoch_acc"]["skipped"] == 1 and b["epoch_acc"]["n"] == 2
    (rec,) = _records(tmp_path / "b" / "run", ("nonfinite",))
    assert rec["step"] == 3 and rec["what"] == what and rec["action"] == "skip"
    if what == "gradients":
        assert rec["nonfinite_grads"] and rec["nonfinite_grads"][0].startswith("projector.")
    else:
        assert rec["loss"] == "nan"  # strict JSON: non-finite numbers as strings
    json.loads((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()[-1])


def test_skip_run_finishes_and_reports(tmp_path):
    tr = Trainer(_cfg(tmp_path, *SKIP))
    _nan_at(tr.method, {2, 6})
    s = tr.fit()
    assert s["finished"]
    eps = _records(tmp_path / "run", ("epoch",))
    assert [e["skipped_steps"] for e in eps] == [1, 1] and all(e["loss"] == e["loss"] for e in eps)
    assert [r["step"] for r in _records(tmp_path / "run", ("nonfinite",))] == [2, 6]


def test_nonfinite_gradients_stop_by_default(tmp_path):
    tr = Trainer(_cfg(tmp_path, "train.epochs=1"))
    _nan_grad_at(tr.method, {4})
    with pytest.raises(NonFiniteLossError, match="non-finite gradients.*projector"):
        tr.fit()
    ck = load_checkpoint_file(tmp_path / "run" / "last.pt")
    assert ck["global_step"] == 3  # the step checkpoint before; the bad step never reached the weights
    (rec,) = _records(tmp_path / "run", ("nonfinite",))
    assert rec["step"] == 4 and rec["action"] == "stop"


def test_consecutive_skip_cap_stops(tmp_path):
    tr = Trainer(_cfg(tmp_path, *SKIP, "train.max_consecutive_skips=2"))
    _nan_at(tr.method, set(range(3, 100)))
    with pytest.raises(NonFiniteLossError, match="max_consecutive_skips"):
        tr.fit()
    recs = _records(tmp_path / "run", ("nonfinite",))
    assert [(r["step"], r["action"]) for r in recs] == [(3, "skip"), (4, "skip"), (5, "stop")]


# ----------------------------------------------------------------- hostile checkpoints
class _Evil:
    """Unpickling this runs open(marker, 'w'): a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _craft(path, marker, fmt):
    obj = {"version": 1, "config": {}, "method": _Evil(marker)}
    if fmt == "raw_pickle":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")


@pytest.mark.parametrize("fmt", ["zip", "legacy_torch", "raw_pickle"])
def test_crafted_checkpoint_cannot_run_code(tmp_path, capsys, fmt):
    from sslext.app.cli import eval_main

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    _craft(run / "last.pt", marker, fmt)
    msg = "refused by torch.load(weights_only=True)"
    with pytest.raises(RuntimeError) as e:
        load_checkpoint_file(run / "last.pt")
    assert msg in str(e.value) and "Unsupported global: GLOBAL io.open" in str(e.value), str(e.value)
    args = []
    for o in [*RUN, f"train.out_dir={tmp_path}", "name=run"]:
        args += ["--set", o]
    assert main(args + ["--resume"]) == 1
    assert eval_main(["--checkpoint", str(run / "last.pt")]) == 1
    assert capsys.readouterr().err.count(msg) == 2
    assert not marker.exists()
    # The file really is malicious: an unrestricted load runs the payload.
    if fmt == "raw_pickle":
        with open(run / "last.pt", "rb") as f:
            pickle.load(f)
    else:
        torch.load(run / "last.pt", weights_only=False)
    assert marker.exists()


def test_checkpoint_missing_keys(tmp_path):
    torch.save({"version": 1, "config": {}, "method": {}}, tmp_path / "c.pt")
    with pytest.raises(RuntimeError, match=r"lacks \['optimizer'"):
        load_checkpoint_file(tmp_path / "c.pt")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("short")
    Trainer(_cfg(d, "train.max_steps=2")).fit()
    return d


@pytest.mark.parametrize(
    "overrides,names",
    [
        (["method.name=vicreg", "method.projector=[32,32]"], ["method.name: 'tico' in the checkpoint, 'vicreg'"]),
        (["model.width=16"], ["model.width: 8 in the checkpoint, 16", "tensor shapes differ", "backbone.conv1.weight"]),
        (["method.out_dim=8"], ["method.out_dim: 16 in the checkpoint, 8", "loss_fn.C: shape (16, 16)"]),
        (
            ["model.backbone=resnet18", "model.width=64"],
            [
                "model.backbone: 'resnet10' in the checkpoint, 'resnet18'",
                "backbone.conv1.weight: shape (8, 3, 3, 3) in the checkpoint, (64, 3, 3, 3) now",
                "more)",
            ],
        ),
        (["optim.batch_size=16"], ["optim.batch_size: 32 in the checkpoint, 16"]),
        (["seed=1"], ["seed: 0 in the checkpoint, 1"]),
    ],
)
def test_resume_mismatch_names_the_difference(short_run, overrides, names):
    run = short_run / "run"
    before = ((run / "last.pt").read_bytes(), (run / "metrics.jsonl").read_text())
    with pytest.raises(CheckpointMismatchError) as e:
        Trainer(_cfg(short_run, *overrides), resume=True)
    for n in names:
        assert n in str(e.value), (n, str(e.value))
    # Refused before anything ran or was written.
    assert ((run / "last.pt").read_bytes(), (run / "metrics.jsonl").read_text()) == before


def test_resume_mismatch_cli_exit_code(short_run, capsys):
    args = []
    for o in [*RUN, f"train.out_dir={short_run}", "name=run", "model.width=16"]:
        args += ["--set", o]
    assert main(args + ["--resume"]) == 1
    assert "model.width" in capsys.readouterr().err


def test_resume_with_changed_hyperparameter_warns(tmp_path):
    Trainer(_cfg(tmp_path, "train.max_steps=2")).fit()
    with pytest.warns(UserWarning, match=r"optim\.lr"):
        tr = Trainer(_cfg(tmp_path, "optim.lr=0.1", "train.max_steps=3"), resume=True)
    assert tr.global_step == 2


# ----------------------------------------------------------------- missing / corrupt data
def test_missing_and_corrupt_dataset_cli(tmp_path, capsys):
    base = [*RUN, f"train.out_dir={tmp_path}", "name=run", "data.dataset=fashion_mnist"]

    def cli(root):
        args = []
        for o in [*base, f"data.root={root}"]:
            args += ["--set", o]
        return main(args)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(empty) == 1
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (bad / f"{stem}.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert cli(bad) == 1
    assert "corrupt" in capsys.readouterr().err


def test_fault_hook_spec_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLEXT_TEST_FAULT", "kill:somewhere:3")
    with pytest.raises(ValueError, match="SSLEXT_TEST_FAULT"):
        Trainer(_cfg(tmp_path))
