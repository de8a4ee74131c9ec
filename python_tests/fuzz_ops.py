"""The op fuzz: every op in ``torch.ops.sslext``, called with one argument of a
valid call changed, in a worker process so that a crash is a finding, not a
lost run.

A case is a small dict (the op, the valid call's shape / dtype / strategy /
seed, the argument changed and how); the worker builds the tensors from it, so
any case can be replayed alone::

    python python_tests/fuzz_ops.py --replay '{"op": "vicreg_loss", ...}'

``Worker`` runs cases in one persistent child (``python fuzz_ops.py --worker``,
JSON lines over pipes) and starts a new one when a case kills it; ``judge``
says whether an outcome is acceptable: the call succeeded with finite outputs
(or non-finite ones after a NaN/Inf was put into an input), or it raised a
RuntimeError / ValueError / TypeError whose message names the changed argument.
``python_tests/test_fuzz.py`` drives it with hypothesis.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Every op's arguments, in schema order, with the kind of change each gets.
ARGS = {
    "build_info": [],
    "batch_covariance": [("z", "tensor")],
    "cross_correlation": [("z_a", "tensor"), ("z_b", "tensor"), ("eps", "float")],
    "off_diagonal_penalty": [("c", "tensor"), ("off_weight", "float"), ("diag_target", "optfloat")],
    "tico_ema_update_": [("c", "tensor"), ("z", "tensor"), ("beta", "float")],
    "vicreg_loss": [
        ("z_a", "tensor"),
        ("z_b", "tensor"),
        ("inv_coeff", "float"),
        ("var_coeff", "float"),
        ("cov_coeff", "float"),
        ("eps", "float"),
        ("strategy", "strategy"),
    ],
    "_vicreg_loss_backward": [
        ("grad_terms", "tensor"),
        ("z_a", "tensor"),
        ("z_b", "tensor"),
        ("mean_a", "tensor"),
        ("mean_b", "tensor"),
        ("var_a", "tensor"),
        ("var_b", "tensor"),
        ("mat_a", "tensor"),
        ("mat_b", "tensor"),
        ("inv_coeff", "float"),
        ("var_coeff", "float"),
        ("cov_coeff", "float"),
        ("eps", "float"),
        ("strategy", "strategy"),
        ("output_mask", "mask"),
    ],
    "vicreg_tico_loss": [
        ("z_a", "tensor"),
        ("z_b", "tensor"),
        ("c", "tensor"),
        ("inv_coeff", "float"),
        ("var_coeff", "float"),
        ("cov_coeff", "float"),
        ("beta", "float"),
        ("eps", "float"),
        ("strategy", "strategy"),
        ("proposal", "bool"),
        ("batch_cov_in_graph", "bool"),
    ],
    "_vicreg_tico_loss_backward": [
        ("grad_terms", "tensor"),
        ("z_a", "tensor"),
        ("z_b", "tensor"),
        ("mean_a", "tensor"),
        ("mean_b", "tensor"),
        ("var_a", "tensor"),
        ("var_b", "tensor"),
        ("proj", "tensor"),
        ("inv_coeff", "float"),
        ("var_coeff", "float"),
        ("cov_coeff", "float"),
        ("eps", "float"),
        ("proposal", "bool"),
        ("output_mask", "mask"),
    ],
    "barlow_twins_loss": [
        ("z_a", "tensor"),
        ("z_b", "tensor"),
        ("lambd", "float"),
        ("eps", "float"),
        ("strategy", "strategy"),
    ],
    "_barlow_twins_loss_backward": [
        ("grad_terms", "tensor"),
        ("norm_a", "tensor"),
        ("norm_b", "tensor"),
        ("inv_std_a", "tensor"),
        ("inv_std_b", "tensor"),
        ("mat", "tensor"),
        ("lambd", "float"),
        ("strategy", "strategy"),
        ("out_dtype", "dtype"),
        ("output_mask", "mask"),
    ],
    "tico_loss": [
        ("z_a", "tensor"),
        ("z_b", "tensor"),
        ("c", "tensor"),
        ("beta", "float"),
        ("rho", "float"),
        ("strategy", "strategy"),
        ("batch_cov_in_graph", "bool"),
    ],
    "_tico_loss_backward": [
        ("grad_terms", "tensor"),
        ("zhat_a", "tensor"),
        ("zhat_b", "tensor"),
        ("norm_a", "tensor"),
        ("norm_b", "tensor"),
        ("proj", "tensor"),
        ("rho", "float"),
        ("out_dtype", "dtype"),
        ("output_mask", "mask"),
    ],
}

DTYPES = ["float16", "bfloat16", "float32", "float64"]
OTHER_DTYPES = DTYPES + ["int64", "bool", "complex64"]
# The changes each kind of argument gets. Tensor changes that keep the call
# valid (noncontig, expanded, transposed square matrices) are in the mix: they
# must then succeed.
CHANGES = {
    "tensor": [
        "rows-1",
        "empty",
        "cols-1",
        "transpose",
        "extra_dim",
        "drop_dim",
        "noncontig",
        "expanded",
        "nan",
        "inf",
        "scalar",
        "not_tensor",
    ]
    + [f"dtype:{d}" for d in OTHER_DTYPES],
    "float": ["nan", "inf", "-inf", "-1", "0", "2", "1e6", "not_number"],
    "optfloat": ["nan", "inf", "-1", "none", "not_number"],
    "strategy": ["-1", "2", "7", "2**40", "flip", "0.5"],
    "bool": ["flip", "not_bool"],
    "dtype": [f"dtype:{d}" for d in OTHER_DTYPES],
    "mask": ["[]", "[T]", "[T,T,T]", "[F,F]", "[T,F]", "[F,T]", "not_list"],
}
# Changes after which non-finite outputs are the expected result, not a bug:
# a NaN/Inf put into an input, or a weight of 1e6 whose float16 gradient
# exceeds float16's range (65504).
NON_FINITE_INPUTS = {"nan", "inf", "-inf"}
LARGE_VALUES = {"1e6"}
ACCEPTED_ERRORS = ("RuntimeError", "ValueError", "TypeError", "NotImplementedError")


def names_argument(message: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def judge(case: dict, result: dict) -> str | None:
    """None if the outcome is acceptable, else what is wrong with it."""
    status = result["status"]
    if status in ("crash", "hang"):
        return f"the worker {result['detail']}"
    if status == "raised":
        if case["arg"] is None:
            return f"a valid call raised {result['type']}: {result['message']}"
        if result["type"] not in ACCEPTED_ERRORS:
            return f"raised {result['type']} (not RuntimeError/ValueError/TypeError): {result['message']}"
        if not names_argument(result["message"], case["arg"]):
            return f"{result['type']} does not name the changed argument {case['arg']!r}: {result['message']}"
        return None
    if result["finite"] or case["change"] in NON_FINITE_INPUTS:
        return None
    if case["change"] in LARGE_VALUES and set(result["nonfinite_dtypes"]) == {"torch.float16"}:
        return None
    return f"succeeded with non-finite outputs: {result['summary']}"


# ----------------------------------------------------------------- the worker side


def build_valid(case: dict):
    import torch

    ops = torch.ops.sslext
    n, d, seed = case["n"], case["d"], case["seed"]
    dtype = getattr(torch, case["dtype"])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.5 + 0.3
    z_a = base.to(dtype)
    z_b = (base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)
    c = (torch.eye(d, dtype=torch.float64) / d + 0.01).to(acc)
    s, prop = case["strategy"], case["proposal"]
    graph = case.get("graph", False)  # cases recorded before the option: detached
    mask = [True, True]
    terms4 = torch.randn(4, generator=g, dtype=torch.float64).to(acc)
    terms3 = torch.randn(3, generator=g, dtype=torch.float64).to(acc)
    op = case["op"]
    if op == "build_info":
        return []
    if op == "batch_covariance":
        return [z_a]
    if op == "cross_correlation":
        return [z_a, z_b, 1e-5]
    if op == "off_diagonal_penalty":
        return [torch.randn(d, d, generator=g, dtype=torch.float64).to(dtype), 0.5, 1.0 if prop else None]
    if op == "tico_ema_update_":
        return [c, z_a, 0.9]
    if op == "vicreg_loss":
        return [z_a, z_b, 25.0, 25.0, 1.0, 1e-4, s]
    if op == "_vicreg_loss_backward":
        out = ops.vicreg_loss(z_a, z_b, 25.0, 25.0, 1.0, 1e-4, s)
        return [terms4, z_a, z_b, *out[1:], 25.0, 25.0, 1.0, 1e-4, s, mask]
    if op == "vicreg_tico_loss":
        return [z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, s, prop, graph]
    if op == "_vicreg_tico_loss_backward":
        out = ops.vicreg_tico_loss(z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, s, prop, graph)
        return [terms4, z_a, z_b, *out[2:7], 25.0, 25.0, 1.0, 1e-4, prop, mask]
    if op == "barlow_twins_loss":
        return [z_a, z_b, 0.0051, 1e-5, s]
    if op == "_barlow_twins_loss_backward":
        out = ops.barlow_twins_loss(z_a, z_b, 0.0051, 1e-5, s)
        return [terms3, *out[1:], 0.0051, s, dtype, mask]
    if op == "tico_loss":
        return [z_a, z_b, c, 0.9, 8.0, s, graph]
    if op == "_tico_loss_backward":
        out = ops.tico_loss(z_a, z_b, c, 0.9, 8.0, s, graph)
        return [terms3, *out[1:6], 8.0, dtype, mask]
    raise KeyError(f"no valid call for op {op!r}")


def _change_tensor(t, change: str, pos: int):
    import torch

    if change == "not_tensor":
        return 1.0
    if change.startswith("dtype:"):
        return t.to(getattr(torch, change.split(":")[1]))
    # Shorter tensors are fresh allocations (clone), not views into the valid
    # one's storage: a kernel that reads past their end then reads past the
    # allocation (a fault on the CPU, a memcheck error in the emulated build),
    # and an empty one has no storage at all.
    if change == "rows-1":
        return (t.narrow(0, 0, t.shape[0] - 1) if t.dim() and t.shape[0] else t.unsqueeze(0)).clone()
    if change == "empty":
        return torch.empty((0, *t.shape[1:]), dtype=t.dtype)
    if change == "cols-1":
        return (t.narrow(-1, 0, t.shape[-1] - 1) if t.dim() and t.shape[-1] else t.unsqueeze(0)).clone()
    if change == "transpose":
        return t.transpose(0, -1) if t.dim() else t
    if change == "extra_dim":
        return t.unsqueeze(0)
    if change == "drop_dim":
        return (t[0] if t.dim() and t.shape[0] else t.reshape(-1)).clone()
    if change == "scalar":
        return t.reshape(-1)[0].clone() if t.numel() else torch.zeros((), dtype=t.dtype)
    if change == "noncontig":  # same values, non-contiguous strides
        if t.dim() >= 2:
            return t.transpose(0, -1).contiguous().transpose(0, -1)
        return torch.stack([t, t], -1)[..., 0] if t.dim() == 1 else t
    if change == "expanded":  # stride 0: every row is the first one
        return t[:1].expand_as(t) if t.dim() and t.shape[0] else t
    if change in ("nan", "inf"):
        t = t.clone()
        if t.numel() and t.is_floating_point():
            t.view(-1)[pos % t.numel()] = float(change)
        return t
    raise KeyError(change)


_FLOATS = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "-1": -1.0,
    "0": 0.0,
    "2": 2.0,
    "1e6": 1e6,
    "not_number": "x",
    "none": None,
}
_INTS = {"-1": -1, "2": 2, "7": 7, "2**40": 2**40, "0.5": 0.5}
_MASKS = {
    "[]": [],
    "[T]": [True],
    "[T,T,T]": [True] * 3,
    "[F,F]": [False, False],
    "[T,F]": [True, False],
    "[F,T]": [False, True],
    "not_list": "x",
}


def _change_value(kind: str, value, change: str):
    import torch

    if change.startswith("dtype:"):
        return getattr(torch, change.split(":")[1])
    if change == "flip":
        return 1 - value if kind == "strategy" else not value
    if change == "not_bool":
        return "x"
    return {"strategy": _INTS, "mask": _MASKS}.get(kind, _FLOATS)[change]


def run_case(case: dict) -> dict:
    """Build and run one case in this process; the worker's job."""
    import torch

    if case["op"] == "_segfault":  # test_fuzz.py's check that a crash is caught
        os.kill(os.getpid(), signal.SIGSEGV)
    args = build_valid(case)
    if case["arg"] is not None:
        names = [name for name, _ in ARGS[case["op"]]]
        i = names.index(case["arg"])
        kind = ARGS[case["op"]][i][1]
        if kind == "tensor":
            args[i] = _change_tensor(args[i], case["change"], case["pos"])
        else:
            args[i] = _change_value(kind, args[i], case["change"])
    op = getattr(torch.ops.sslext, case["op"])
    try:
        out = op(*args)
    except Exception as e:  # noqa: BLE001  (the outcome is judged by the parent)
        return {"status": "raised", "type": type(e).__name__, "message": str(e)[:2000]}
    if case["op"] == "tico_ema_update_":
        out = args[0]  # updated in place
    outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
    bad = [i for i, t in enumerate(outs) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return {
        "status": "ok",
        "finite": not bad,
        "nonfinite_dtypes": [str(outs[i].dtype) for i in bad],
        "summary": f"non-finite outputs {bad} of {len(outs)} ({[str(outs[i].dtype) for i in bad]})",
    }


def _worker_main() -> None:
    # The protocol owns the real stdout; anything the ops print goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import sslext  # noqa: F401  (loads the ops: the CPU or the emulated build)

    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        result = run_case(json.loads(line))
        proto.write(json.dumps(result) + "\n")


# ----------------------------------------------------------------- the parent side


class Worker:
    """One persistent child that runs cases; restarted when a case kills it."""

    def __init__(self, timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self.proc = None
        self.restarts = 0
        self.counts: dict = {}
        self.started = time.monotonic()

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        if getattr(self, "stderr", None) is not None:
            self.stderr.close()
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not isinstance(self._read(300.0), dict):
            raise RuntimeError(f"the fuzz worker did not start: {self._stderr_tail()}")

    def _read(self, timeout: float):
        """The worker's next answer; None if it closed its end (it died), or
        "timeout" if it said nothing for `timeout` seconds."""
        if not self.sel.select(timeout):
            return "timeout"
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-1500:]

    def _stop(self, grace_s: float = 0.0) -> None:
        if self.proc is not None:
            try:  # a worker that closed its pipe is exiting: its status says how
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.last_rc = self.proc.wait()
            self._release()

    def run(self, case: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        result = self._read(self.timeout_s)
        if not isinstance(result, dict):
            hung = result == "timeout"
            self._stop(grace_s=0.0 if hung else 30.0)
            self.restarts += 1
            what = (
                f"did not answer within {self.timeout_s:.0f} s"
                if hung
                else f"died (exit status {self.last_rc}; negative: killed by that signal)"
            )
            result = {
                "status": "hang" if hung else "crash",
                "detail": f"{what} on this case; its stderr ends with:\n{self._stderr_tail()}",
            }
        key = (case["op"], "refused" if result["status"] == "raised" else result["status"])
        self.counts[key] = self.counts.get(key, 0) + 1
        return result

    def _release(self) -> None:
        self.sel.close()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except BrokenPipeError:  # a dead worker's unread input
                pass
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self._release()
        if getattr(self, "stderr", None) is not None:
            self.stderr.close()
            self.stderr = None

    def summary(self) -> str:
        ops = sorted({op for op, _ in self.counts})
        total = sum(self.counts.values())
        lines = [f"op fuzz: {total} cases in {time.monotonic() - self.started:.1f} s, {self.restarts} worker restarts"]
        for op in ops:
            per = {s: self.counts.get((op, s), 0) for s in ("ok", "refused", "crash", "hang")}
            lines.append(f"  {op:30s} " + "  ".join(f"{k} {v}" for k, v in per.items()))
        return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    elif len(sys.argv) == 3 and sys.argv[1] == "--replay":
        import sslext  # noqa: F401

        case = json.loads(sys.argv[2])
        result = run_case(case)
        print(json.dumps(result, indent=2))
        print("verdict:", judge(case, result) or "acceptable")
    else:
        sys.exit(f"usage: {sys.argv[0]} --worker | --replay CASE_JSON")
