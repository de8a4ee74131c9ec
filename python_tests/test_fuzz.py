"""Every op in torch.ops.sslext survives any single bad argument (python_tests/fuzz_ops.py).

A sample of SSLEXT_FUZZ_CASES cases (default 300, derandomized) runs in the
normal suite; ``make fuzz`` runs 10,000 on the CPU build and ``make
fuzz-emulated`` on the emulated CUDA build, whose memcheck turns a read past
the end of a tensor into an error that names no argument (a failure here).
"""

import os

import pytest
import torch
from fuzz_ops import ARGS, CHANGES, DTYPES, Worker, judge, names_argument
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sslext  # noqa: F401  (registers the ops this test enumerates)
from sslext._checks import STRATEGY_CODES

CASES = int(os.environ.get("SSLEXT_FUZZ_CASES", "300"))

_worker = None


@pytest.fixture(scope="module", autouse=True)
def worker():
    global _worker
    _worker = Worker()
    yield _worker
    print("\n" + _worker.summary())
    _worker.close()


@st.composite
def cases(draw):
    op = draw(st.sampled_from(sorted(ARGS)))
    # One call in 13 is left valid: those must succeed with finite outputs.
    changed = ARGS[op] and draw(st.integers(0, 12)) > 0
    arg, kind = draw(st.sampled_from(ARGS[op])) if changed else (None, None)
    return {
        "op": op,
        "n": draw(st.integers(2, 9)),
        "d": draw(st.integers(1, 12)),
        "dtype": draw(st.sampled_from(DTYPES)),
        "strategy": draw(st.sampled_from(sorted(STRATEGY_CODES.values()))),
        "proposal": draw(st.booleans()),
        "graph": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
        "arg": arg,
        "change": draw(st.sampled_from(CHANGES[kind])) if changed else None,
        "pos": draw(st.integers(0, 10**6)),
    }


def test_every_op_is_fuzzed():
    registered = {
        name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("sslext::")
    }
    assert registered == set(ARGS), "fuzz_ops.ARGS must list every op of torch.ops.sslext"
    for op, args in ARGS.items():
        schema = getattr(torch.ops.sslext, op).default._schema
        assert [a.name for a in schema.arguments] == [name for name, _ in args], op


@settings(max_examples=CASES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=cases())
def test_fuzz_ops(case):
    problem = judge(case, _worker.run(case))
    assert problem is None, f"{problem}\ncase: {case}"


def test_worker_reports_a_crash():
    """A case that kills the worker (as a segfault in an op would) is reported as a
    crash naming the signal, and the next case runs in a fresh worker."""
    w = Worker(timeout_s=120)
    valid = {
        "op": "batch_covariance",
        "n": 3,
        "d": 2,
        "dtype": "float32",
        "strategy": STRATEGY_CODES["covariance"],
        "proposal": False,
        "seed": 0,
        "arg": None,
        "change": None,
        "pos": 0,
    }
    try:
        result = w.run({**valid, "op": "_segfault"})
        assert result["status"] == "crash" and "exit status -11" in result["detail"], result
        assert "died" in judge(valid, result)
        assert w.run(valid)["status"] == "ok" and w.restarts == 1
    finally:
        w.close()


def test_judge():
    case = {"op": "vicreg_loss", "arg": "eps", "change": "nan"}
    assert judge(case, {"status": "raised", "type": "RuntimeError", "message": "eps must be finite"}) is None
    assert "does not name" in judge(case, {"status": "raised", "type": "RuntimeError", "message": "epsilon"})
    assert "IndexError" in judge(case, {"status": "raised", "type": "IndexError", "message": "eps"})
    assert judge(case, {"status": "ok", "finite": False, "summary": ""}) is None
    assert "non-finite" in judge({**case, "change": "-1"}, {"status": "ok", "finite": False, "summary": ""})
    assert "died" in judge(case, {"status": "crash", "detail": "died (exit status -11)"})
    assert "valid call" in judge({**case, "arg": None}, {"status": "raised", "type": "RuntimeError", "message": "x"})
    assert names_argument("out_dtype Float does not match", "out_dtype")
    assert not names_argument("mat_a must have shape", "mat")
