"""sslext.compat.lightly against the real lightly package: parity and CPU speed.

For each of VICRegLoss, BarlowTwinsLoss and TiCoLoss (lightly's defaults on
both sides), on the same inputs:
  * parity: the loss value and both input gradients, relative to lightly's
    (TiCo: over several steps, with the running covariance C compared too);
  * speed: forward+backward, median with p20/p80 after warm-up, and the ratio
    lightly / sslext.
Writes lightly_compat.json and lightly_compat.md into --out, with the machine,
versions, thread count and the load average before and after (the CPU may be
shared with other jobs). lightly must be importable, e.g. installed with
``pip install --no-deps --target .bench-pkgs lightly`` and run with
``PYTHONPATH=.bench-pkgs``:

    PYTHONPATH=.bench-pkgs python benchmarks/bench_lightly_compat.py --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sslext  # noqa: E402
from sslext.compat import lightly as compat  # noqa: E402

LOSSES = ("VICRegLoss", "BarlowTwinsLoss", "TiCoLoss")
DEFAULT_SHAPES = "256x2048,256x4096,512x8192"


def make_inputs(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, d, generator=g)
    z_a = shared + 0.5 * torch.randn(n, d, generator=g) + 0.3
    z_b = shared + 0.5 * torch.randn(n, d, generator=g) - 0.1
    return z_a, z_b


def value_and_grads(loss_fn, z_a, z_b):
    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()
    loss = loss_fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def rel(x, ref):
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def parity(name, lightly_loss, n, d, steps):
    """Max relative differences of value, gradients (and C) over ``steps`` calls."""
    ours, theirs = getattr(compat, name)(), getattr(lightly_loss, name)()
    worst = {"value": 0.0, "grad_a": 0.0, "grad_b": 0.0}
    if name == "TiCoLoss":
        worst["C"] = 0.0
    for step in range(steps):
        z_a, z_b = make_inputs(n, d, seed=step)
        got, want = value_and_grads(ours, z_a, z_b), value_and_grads(theirs, z_a, z_b)
        for key, x, y in zip(("value", "grad_a", "grad_b"), got, want):
            worst[key] = max(worst[key], rel(x, y))
        if name == "TiCoLoss":
            worst["C"] = max(worst["C"], rel(ours.C, theirs.C))
    return worst


def time_call(loss_fn, z_a, z_b, warmup, repeats, budget_s):
    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()

    def run():
        a.grad = b.grad = None
        loss_fn(a, b).backward()

    for _ in range(warmup):
        run()
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
    return {"median_s": statistics.median(times), "p20_s": q(0.2), "p80_s": q(0.8), "runs": len(times)}


def machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def write_atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def to_markdown(res):
    m = res["machine"]
    lines = [
        "# sslext.compat.lightly vs lightly (CPU)",
        "",
        f"{res['date']}; {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch threads; "
        f"torch {m['torch']}, lightly {res['lightly_version']}, sslext {res['sslext_version']}; float32, "
        f"forward+backward, lightly's default hyperparameters on both sides. "
        f"Load average (1 min) {res['loadavg_before'][0]:.1f} before, {res['loadavg_after'][0]:.1f} after.",
        "",
        "## Speed (median, p20-p80; speedup = lightly / sslext)",
        "",
        "| loss | N x D | lightly ms | sslext ms | speedup |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lt, st = r["lightly"], r["sslext"]
        lines.append(
            f"| {r['loss']} | {r['n']}x{r['d']} | {lt['median_s'] * 1e3:.1f} ({lt['p20_s'] * 1e3:.1f}-{lt['p80_s'] * 1e3:.1f}, "
            f"{lt['runs']} runs) | {st['median_s'] * 1e3:.1f} ({st['p20_s'] * 1e3:.1f}-{st['p80_s'] * 1e3:.1f}, "
            f"{st['runs']} runs) | {r['speedup']:.2f}x |"
        )
    lines += [
        "",
        "## Parity (max relative difference to lightly over the steps)",
        "",
        "| loss | N x D | steps | value | grad z_a | grad z_b | C |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["parity"]:
        p = r["max_rel_diff"]
        c = f"{p['C']:.1e}" if "C" in p else "-"
        lines.append(
            f"| {r['loss']} | {r['n']}x{r['d']} | {r['steps']} | {p['value']:.1e} | {p['grad_a']:.1e} | "
            f"{p['grad_b']:.1e} | {c} |"
        )
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for lightly_compat.json and .md")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxD timing shapes")
    p.add_argument("--parity-shapes", default="64x256,256x64,256x2048", help="comma-separated NxD parity shapes")
    p.add_argument("--steps", type=int, default=4, help="calls per parity check (TiCo's C evolves)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20, help="timed calls at most per peer and shape")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per peer and shape (min 3 calls)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    try:
        import lightly
        from lightly import loss as lightly_loss
    except ImportError as e:
        sys.exit(
            f"lightly is not importable ({e}); install it with "
            "`pip install --no-deps --target .bench-pkgs lightly` and run with PYTHONPATH=.bench-pkgs"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
    parity_shapes = [tuple(int(x) for x in s.split("x")) for s in args.parity_shapes.split(",") if s]
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "lightly_version": lightly.__version__,
        "sslext_version": sslext.__version__,
        "loadavg_before": os.getloadavg(),
        "parity": [],
        "rows": [],
    }
    for name in LOSSES:
        for n, d in parity_shapes:
            res["parity"].append(
                {
                    "loss": name,
                    "n": n,
                    "d": d,
                    "steps": args.steps,
                    "max_rel_diff": parity(name, lightly_loss, n, d, args.steps),
                }
            )
            print(res["parity"][-1], flush=True)
    for n, d in shapes:
        z_a, z_b = make_inputs(n, d, seed=0)
        for name in LOSSES:
            row = {"loss": name, "n": n, "d": d}
            for peer, module in (("lightly", lightly_loss), ("sslext", compat)):
                row[peer] = time_call(getattr(module, name)(), z_a, z_b, args.warmup, args.repeats, args.budget)
            row["speedup"] = row["lightly"]["median_s"] / row["sslext"]["median_s"]
            res["rows"].append(row)
            print(row, flush=True)
    res["loadavg_after"] = os.getloadavg()
    os.makedirs(args.out, exist_ok=True)
    write_atomic(os.path.join(args.out, "lightly_compat.json"), json.dumps(res, indent=1) + "\n")
    write_atomic(os.path.join(args.out, "lightly_compat.md"), to_markdown(res))
    print(to_markdown(res))


if __name__ == "__main__":
    main()
