"""Loss microbenchmarks: sslext against the pure-PyTorch losses users run today.

Peers, all measured in the same run on the same inputs:
  sslext[auto|gram|covariance]  the fused ops
  reference                     official formulation (full D x D, off-diagonal by view copy)
  reference+compile             the same under torch.compile
  plain-gram                    the Gram formulation in plain PyTorch (what the algebra alone buys)
  lightly                       lightly's loss modules, when the package is importable

Reported per (loss, N, D, dtype, mode): median time with p20/p80 over many timed
runs after warm-up, peak extra memory, relative error against float64, the
ratio of every peer to sslext[auto], and roofline floors. Writes JSON, a
markdown table and a PNG plot into --out. losses.json and losses.md are
rewritten (atomically) after every row, so a run stopped by SIGINT or a time
limit leaves every row measured so far; the plot is drawn at the end.

    python benchmarks/bench_losses.py --device cpu --out benchmarks/results/cpu
    python benchmarks/bench_losses.py --device cuda --out OUTDIR   # full GPU grid
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import sslext  # noqa: E402
from sslext import functional as SF  # noqa: E402
from sslext import reference as R  # noqa: E402
from sslext.app.training.precision import cpu_model  # noqa: E402

LOSSES = ["vicreg", "barlow_twins", "tico", "vicreg_tico"]
STATEFUL = {"tico", "vicreg_tico"}
CPU_GRID = [(256, 4096), (2048, 1024)]
GPU_GRID = [(n, d) for n in (256, 512, 1024, 2048) for d in (1024, 2048, 4096, 8192)]


# ----------------------------------------------------------------- peers


def _sslext(loss, strategy):
    fns = {
        "vicreg": lambda a, b, c: SF.vicreg_loss(a, b, strategy=strategy),
        "barlow_twins": lambda a, b, c: SF.barlow_twins_loss(a, b, strategy=strategy),
        "tico": lambda a, b, c: SF.tico_loss(a, b, c, strategy=strategy),
        "vicreg_tico": lambda a, b, c: SF.vicreg_tico_loss(a, b, c, strategy=strategy),
    }
    return fns[loss]


def _reference(loss, gram=False):
    if loss == "vicreg":
        f = R.vicreg_gram if gram else R.vicreg_reference
        return lambda a, b, c: f(a, b)[0]
    if loss == "barlow_twins":
        f = R.barlow_twins_gram if gram else R.barlow_twins_reference
        return lambda a, b, c: f(a, b)[0]
    f = {
        ("tico", False): R.tico_reference,
        ("tico", True): R.tico_gram,
        ("vicreg_tico", False): R.vicreg_tico_reference,
        ("vicreg_tico", True): R.vicreg_tico_gram,
    }[(loss, gram)]

    state = {}

    def run(a, b, c):
        # The running C is replaced by C_new after every call, as lightly's
        # module rebinds self.C (not in place: autograd may have saved the old one).
        if state.get("shape") != tuple(c.shape):
            state.update(shape=tuple(c.shape), c=c)
        out = f(a, b, state["c"])
        state["c"] = out[2]
        return out[0]

    return run


def _lightly(loss):
    try:
        from lightly import loss as L
    except Exception:  # not installed in this environment
        return None
    # Hyperparameters set to ours, so every peer computes the same loss
    # (lightly's Barlow Twins standardises with the unbiased std, a ~1/N
    # difference that shows in its rel_error column).
    if loss == "vicreg":
        m = L.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4)
        return lambda a, b, c: m(a, b)
    if loss == "barlow_twins":
        m = L.BarlowTwinsLoss(lambda_param=0.0051)
        return lambda a, b, c: m(a, b)
    if loss == "tico":
        # lightly's TiCoLoss sizes its C on the first call: one module per dim.
        mods = {}

        def run(a, b, c):
            if a.shape[1] not in mods:
                mods[a.shape[1]] = L.TiCoLoss(beta=0.9, rho=8.0)
            return mods[a.shape[1]](a, b)

        return run
    return None  # lightly has no VICReg-TiCo


def peers(loss, compile_peer=True):
    out = {
        "sslext[auto]": _sslext(loss, "auto"),
        "sslext[gram]": _sslext(loss, "gram"),
        "sslext[covariance]": _sslext(loss, "covariance"),
        "reference": _reference(loss),
        # dynamic=True: one compilation serves the whole grid of shapes.
        "reference+compile": torch.compile(_reference(loss), dynamic=True),
        "plain-gram": _reference(loss, gram=True),
    }
    if not compile_peer:  # its compiles (one per loss and dtype) cost tens of seconds on a GPU
        del out["reference+compile"]
    lightly = _lightly(loss)
    if lightly is not None:
        out["lightly"] = lightly
    return out


# ------------------------------------------------------------ measuring


def make_inputs(n, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, d, generator=g)
    z_a = (shared + 0.5 * torch.randn(n, d, generator=g)).to(device=device, dtype=dtype)
    z_b = (shared + 0.5 * torch.randn(n, d, generator=g)).to(device=device, dtype=dtype)
    c = torch.zeros(d, d, device=device)
    return z_a, z_b, c


def step_fn(fn, z_a, z_b, c, mode):
    if mode == "forward":

        def run():
            with torch.no_grad():
                return fn(z_a, z_b, c)

        return run
    a = z_a.detach().clone().requires_grad_()
    b = z_b.detach().clone().requires_grad_()

    def run():
        a.grad = b.grad = None
        loss = fn(a, b, c)
        loss.backward()
        return loss

    return run


def time_it(run, device, warmup, repeats):
    for _ in range(warmup):
        run()
    times = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        torch.cuda.synchronize()
        for s, e in zip(starts, ends):
            s.record()
            run()
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
    return {"median_s": statistics.median(times), "p20_s": q(0.2), "p80_s": q(0.8), "runs": len(times)}


def cuda_peak_extra(run):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_extra(run):
    """Peak extra resident memory of one call on the CPU.

    The CPU allocator keeps no peak statistic, so this resets the kernel's
    high-water mark (VmHWM, via /proc/self/clear_refs) and reads it back after
    the call. main() re-executes the script with a fixed glibc mmap threshold
    so that freed tensors leave the resident set at once, making RSS track
    live tensors.
    """
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _proc_status_kib("VmRSS")
    run()
    return (_proc_status_kib("VmHWM") - before) * 1024


def cpu_memory_pass(args):
    """Peak memory of every row, measured by a child process (see cpu_peak_extra)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "memory.json")
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(256 * 1024))
        argv = [a for a in sys.argv[1:]]
        subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--memory-only", path], env=env, check=True)
        with open(path) as f:
            return {tuple(k.split("|")): v for k, v in json.load(f).items()}


def rel_error(fn, loss, z_a, z_b, c):
    """|loss - loss_float64| / |loss_float64| on the same inputs (and the same C)."""
    exact = _reference(loss)(z_a.double(), z_b.double(), c.double().clone())
    with torch.no_grad():
        got = fn(z_a, z_b, c.clone())
    return abs(got.double().item() - exact.item()) / abs(exact.item())


# -------------------------------------------------------------- roofline


def flops_bytes(loss, strategy, n, d, mode, elem=4):
    """GEMM FLOPs and the minimum bytes sslext's algorithm must move."""
    m = 2 * n if loss == "vicreg_tico" else n
    if loss == "vicreg":
        fwd = 2 * (2 * n * n * d if strategy == "gram" else 2 * n * d * d)
        bwd = fwd
    elif loss == "barlow_twins":
        fwd = 2 * (2 * n * n * d) if strategy == "gram" else 2 * n * d * d
        bwd = 2 * (2 * n * n * d) if strategy == "gram" else 2 * (2 * n * d * d)
    else:
        # TiCo family, as csrc/ops/tico_loss.cpp runs it. Gram path: Y C, Y Y^T,
        # (Y Y^T) Y, then the EMA update of C in place (Y^T Y). Covariance
        # path: C_new = beta C + Y^T Y / M and Y C_new; C is then a copy.
        fwd = (4 * m * d * d + 4 * m * m * d) if strategy == "gram" else 4 * m * d * d
        bwd = 0
    flops = fwd + (bwd if mode == "forward+backward" else 0)
    io = 2 * n * d * elem * (2 if mode == "forward+backward" else 1)
    mat = (n * n if strategy == "gram" else d * d) * 4 * (2 if loss in ("vicreg", "barlow_twins") else 1)
    if loss in STATEFUL:
        mat += 2 * d * d * 4  # read and write the running C
    return flops, io + mat


def measure_peak_rates(device, grid):
    """This machine's GEMM rate and copy bandwidth, the ceilings of its roofline.

    A single large square SGEMM understates what the CPU reaches on the
    cache-friendlier shapes the losses run (2048^3 ran at ~115 GFLOP/s where
    1024 x 2048 x 1024 ran at ~165 here), which would put some losses above
    their "floor". The ceiling is therefore the best rate over every GEMM
    shape of the grid (X^T X and X X^T for each N x D) and 2048^3.
    """
    shapes = {(2048, 2048, 2048)}
    for n, d in grid:
        for m in (n, 2 * n):  # the TiCo-contrast VICReg stacks both views
            shapes.add((d, m, d))
            shapes.add((m, d, m))
    best, best_shape = 0.0, None
    for m, k, n in sorted(shapes):
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        rate = 2 * m * k * n / time_it(lambda a=a, b=b: a @ b, device, 2, 5)["median_s"]
        if rate > best:
            best, best_shape = rate, (m, k, n)
    x = torch.randn((256 if device.type == "cuda" else 64) * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    t = time_it(lambda x=x, y=y: y.copy_(x), device, 2, 10)["median_s"]
    bw = 2 * x.numel() * 4 / t
    m, k, n = best_shape
    del a, b, x, y
    return (
        best,
        bw,
        (
            f"measured here: best SGEMM {best / 1e9:.0f} GFLOP/s ({m}x{k} @ {k}x{n}, best of "
            f"{len(shapes)} shapes), copy {bw / 1e9:.1f} GB/s"
        ),
    )


# ------------------------------------------------------------------ main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--shapes", default=None, help="e.g. 256x4096,2048x1024 (default: the device's grid)")
    p.add_argument("--dtypes", default="float32", help="comma list: float32,bfloat16")
    p.add_argument("--modes", default="forward,forward+backward")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory measurement")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer (reference+compile)")
    p.add_argument("--no-plot", action="store_true", help="write no losses.png")
    p.add_argument("--memory-only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    # A command a shell started in the background inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt: gpu_check.sh's `timeout --signal=INT` must still stop us with our rows.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but no CUDA device is visible")
    losses = [x for x in args.losses.split(",") if x]
    unknown = set(losses) - set(LOSSES)
    if unknown:
        sys.exit(f"--losses: unknown {sorted(unknown)}; expected some of {LOSSES}")
    if args.shapes:
        try:
            grid = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        except ValueError:
            sys.exit(f"--shapes must look like 256x4096,2048x1024, got {args.shapes!r}")
    else:
        grid = GPU_GRID if device.type == "cuda" else CPU_GRID
    dtypes = [getattr(torch, x) for x in args.dtypes.split(",")]
    modes = args.modes.split(",")
    repeats = args.repeats or (50 if device.type == "cuda" else 10)
    os.makedirs(args.out, exist_ok=True)

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    peak_flops, peak_bytes, peak_note = measure_peak_rates(device, grid)
    env = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else (platform.processor() or platform.machine()) + f" ({os.cpu_count()} cores)",
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "sslext_build": sslext.build_info(),
        "threads": torch.get_num_threads(),
        "tf32": False,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "repeats": repeats,
        "warmup": args.warmup,
        "roofline_ceilings": peak_note,
    }
    memory = {}
    if device.type == "cpu" and not args.no_memory and not args.memory_only:
        memory = cpu_memory_pass(args)
    measured_memory = {}
    rows = []
    try:
        _measure(
            args,
            losses,
            grid,
            dtypes,
            modes,
            repeats,
            device,
            memory,
            measured_memory,
            rows,
            peak_flops,
            peak_bytes,
            env,
        )
    except KeyboardInterrupt:  # SIGINT (a time limit): the files already hold every finished row
        if not args.memory_only:
            print(f"interrupted: {len(rows)} rows in {os.path.join(args.out, 'losses.json')}", flush=True)
        sys.exit(130)
    if args.memory_only:
        with open(args.memory_only, "w") as f:
            json.dump(measured_memory, f)
        return
    _write_results(args.out, env, rows)
    if not args.no_plot:
        _plot(rows, os.path.join(args.out, "losses.png"), env)
    print(_markdown(env, rows))


def _atomic_write(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_results(out, env, rows):
    """losses.json and losses.md with every row so far (ratios recomputed: a row's sslext[auto] peer may be new).

    SIGINT is held off while both are written, so an interrupted run leaves the two files with the same rows.
    """
    _add_ratios(rows)
    block = hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if block else None
    try:
        _atomic_write(os.path.join(out, "losses.json"), json.dumps({"env": env, "results": rows}, indent=1))
        _atomic_write(os.path.join(out, "losses.md"), _markdown(env, rows))
    finally:
        if block:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _measure(
    args, losses, grid, dtypes, modes, repeats, device, memory, measured_memory, rows, peak_flops, peak_bytes, env
):
    for loss in losses:
        all_peers = peers(loss, compile_peer=not args.no_compile)
        for n, d in grid:
            for dtype in dtypes:
                z_a, z_b, c = make_inputs(n, d, dtype, device)
                errors = {}
                for name, fn in all_peers.items():
                    if args.memory_only:
                        errors[name] = 0.0
                        continue
                    try:
                        errors[name] = rel_error(fn, loss, z_a, z_b, c)
                    except Exception as exc:  # a peer that cannot run this dtype
                        errors[name] = f"error: {type(exc).__name__}"
                for mode in modes:
                    for name, fn in all_peers.items():
                        if isinstance(errors[name], str):
                            continue
                        run = step_fn(fn, z_a, z_b, c.clone(), mode)
                        mkey = (loss, str(n), str(d), str(dtype).split(".")[1], mode, name)
                        if args.memory_only:
                            try:
                                run()  # warm-up: one-time allocations are not the call's
                                measured_memory["|".join(mkey)] = cpu_peak_extra(run)
                            except Exception as exc:
                                print(f"memory {mkey}: {type(exc).__name__}: {exc}", flush=True)
                            continue
                        try:
                            t = time_it(run, device, args.warmup, repeats)
                        except Exception as exc:  # record it and go on with the other peers
                            print(f"{loss} {n}x{d} {mode} {name}: {type(exc).__name__}: {exc}", flush=True)
                            continue
                        mem = None
                        if device.type == "cuda":
                            mem = cuda_peak_extra(run)
                        else:
                            mem = memory.get(mkey)
                        strategy = (
                            "gram"
                            if name.endswith("[gram]")
                            or (name == "sslext[auto]" and (2 * n if loss == "vicreg_tico" else n) < d)
                            else "covariance"
                        )
                        fl, by = flops_bytes(loss, strategy, n, d, mode)
                        floor = max(fl / peak_flops, by / peak_bytes)
                        row = dict(
                            loss=loss,
                            n=n,
                            d=d,
                            dtype=str(dtype).split(".")[1],
                            mode=mode,
                            peer=name,
                            rel_error=errors[name],
                            peak_extra_bytes=mem,
                            **t,
                        )
                        # The ceilings are FP32 rates; a bfloat16 GEMM's ceiling is another one.
                        if name.startswith("sslext") and dtype == torch.float32:
                            row.update(flops=fl, bytes=by, floor_s=floor, floor_fraction=floor / t["median_s"])
                        rows.append(row)
                        _write_results(args.out, env, rows)
                        print(
                            f"{loss:13s} {n:5d}x{d:<5d} {row['dtype']:8s} {mode:16s} {name:20s} "
                            f"{t['median_s'] * 1e3:9.3f} ms  err {errors[name]:.1e}  "
                            f"mem {'-' if mem is None else f'{mem / 2**20:.1f} MiB'}",
                            flush=True,
                        )


def _add_ratios(rows):
    base = {(r["loss"], r["n"], r["d"], r["dtype"], r["mode"]): r for r in rows if r["peer"] == "sslext[auto]"}
    for r in rows:
        b = base.get((r["loss"], r["n"], r["d"], r["dtype"], r["mode"]))
        if b:
            r["time_vs_sslext"] = r["median_s"] / b["median_s"]
            if r["peak_extra_bytes"] and b["peak_extra_bytes"]:
                r["memory_vs_sslext"] = r["peak_extra_bytes"] / b["peak_extra_bytes"]


def _markdown(env, rows):
    lines = [
        f"# Loss benchmarks on {env['device']}",
        "",
        f"{env['cpu_model']}; torch {env['torch']}, CUDA {env['cuda']}, TF32 off, {env['threads']} threads, "
        f"{env['date']}; median of {env['repeats']} runs after {env['warmup']} warm-up (p20-p80 in brackets). "
        f"'x sslext' = peer time / sslext[auto] time (higher: sslext faster). Peak = extra memory of one call. "
        f"Roofline ceilings: {env['roofline_ceilings']}.",
        "",
        "| loss | N x D | dtype | mode | peer | median ms [p20-p80] | x sslext | peak MiB | rel. err vs fp64 | floor frac. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = "-" if not r["peak_extra_bytes"] else f"{r['peak_extra_bytes'] / 2**20:.1f}"
        frac = f"{r['floor_fraction']:.2f}" if "floor_fraction" in r else ""
        lines.append(
            f"| {r['loss']} | {r['n']}x{r['d']} | {r['dtype']} | {r['mode']} | {r['peer']} | "
            f"{r['median_s'] * 1e3:.3f} [{r['p20_s'] * 1e3:.3f}-{r['p80_s'] * 1e3:.3f}] | "
            f"{r.get('time_vs_sslext', float('nan')):.2f} | {mem} | {r['rel_error']:.1e} | {frac} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows, path, env):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sel = [
        r
        for r in rows
        if r["mode"] == "forward+backward" and r["peer"] in ("reference", "reference+compile", "plain-gram", "lightly")
    ]
    if not sel:
        return
    labels = sorted({(r["loss"], r["n"], r["d"], r["dtype"]) for r in sel})
    peers_ = [
        p for p in ("reference", "reference+compile", "plain-gram", "lightly") if any(r["peer"] == p for r in sel)
    ]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    width = 0.8 / len(peers_)
    for i, p in enumerate(peers_):
        vals = []
        for lab in labels:
            m = [r for r in sel if (r["loss"], r["n"], r["d"], r["dtype"]) == lab and r["peer"] == p]
            vals.append(m[0]["time_vs_sslext"] if m else 0)
        ax.bar([j + i * width for j in range(len(labels))], vals, width, label=p)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))])
    ax.set_xticklabels([f"{l}\n{n}x{d}\n{dt}" for l, n, d, dt in labels], fontsize=7)
    ax.set_ylabel("peer time / sslext time (fwd+bwd)")
    ax.set_title(f"sslext speed-up, {env['device']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
