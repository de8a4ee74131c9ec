"""Is a custom kernel worth it for the contrastive losses? Time and peak memory
of InfoNCE over a large queue and of NT-Xent, against a training step.

Rows (all forward+backward, float32 losses as the methods run them):
  infonce            InfoNCELoss(q, k, queue), N x D queries, K x D queue:
                     materialises the N x (1 + K) logits (and their softmax
                     and gradient), the hot spot a fused kernel would remove
  infonce+snapshot   the same plus the queue copy MoCo takes every step
  ntxent             NTXentLoss over 2N x 2N similarities
  resnet18 step      forward+backward of a CIFAR-stem ResNet-18 on one view of
                     N 32x32 images (on CUDA with bf16 autocast and
                     channels_last, as the trainer runs it)

The loss's share is loss / (loss + resnet18 step). A real MoCo/SimCLR step
runs the backbone on two views (and MoCo's key encoder twice more), so the
true share is smaller still: this is an upper bound.

    python benchmarks/bench_contrastive.py --device cpu --out benchmarks/results/cpu
    python benchmarks/bench_contrastive.py --device cuda --out OUTDIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_losses import _cpu_model, cpu_peak_extra, cuda_peak_extra, time_it  # noqa: E402

from sslext.contrastive import InfoNCELoss, NTXentLoss  # noqa: E402
from sslext.models import build_backbone  # noqa: E402


def make_cases(n, d, queue_sizes, device):
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*s):
        return torch.randn(*s, generator=g).to(device)

    cases = []
    for k in queue_sizes:
        q = rnd(n, d).requires_grad_(True)
        key = rnd(n, d)
        queue = torch.nn.functional.normalize(rnd(k, d), dim=1)
        loss_fn = InfoNCELoss(0.2)

        def run(q=q, key=key, queue=queue, loss_fn=loss_fn):
            q.grad = None
            loss_fn(q, key, queue).backward()

        def run_snap(q=q, key=key, queue=queue, loss_fn=loss_fn):
            q.grad = None
            loss_fn(q, key, queue.clone()).backward()

        cases.append(("infonce", f"N={n} K={k} D={d}", run, n * (k + 1) * 4))
        cases.append(("infonce+snapshot", f"N={n} K={k} D={d}", run_snap, n * (k + 1) * 4))
    z_a, z_b = rnd(n, d).requires_grad_(True), rnd(n, d).requires_grad_(True)
    nt = NTXentLoss(0.2)

    def run_nt():
        z_a.grad = z_b.grad = None
        nt(z_a, z_b).backward()

    cases.append(("ntxent", f"N={n} D={d}", run_nt, (2 * n) ** 2 * 4))
    return cases


def make_step(n, device):
    torch.manual_seed(0)
    net = build_backbone("resnet18", True).to(device)
    x = torch.randn(n, 3, 32, 32, device=device)
    amp = device.type == "cuda"
    if amp:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        net.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        out.float().square().mean().backward()

    return ("resnet18 step", f"N={n} 32x32, 1 view", run, None)


def memory_pass(args):
    """CPU peak memory per row from a child with a fixed mmap threshold (see bench_losses.cpu_peak_extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mem.json")
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(256 * 1024))
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--memory-only", path], env=env, check=True
        )
        with open(path) as f:
            return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="folder for contrastive.json / contrastive.md (created)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queues", default="4096,16384,65536")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--step-repeats", type=int, default=None, help="timed runs of the ResNet-18 step")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-only", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        queues = [int(v) for v in args.queues.split(",") if v]
    except ValueError:
        sys.exit(f"--queues must look like 4096,16384, got {args.queues!r}")
    torch.backends.cuda.matmul.allow_tf32 = False
    cases = make_cases(args.batch, args.dim, queues, device) + [make_step(args.batch, device)]

    if args.memory_only:
        mem = {}
        for name, shape, run, _ in cases:
            run()  # warm: first-call allocations are not the steady state
            mem[f"{name}|{shape}"] = cpu_peak_extra(run)
        with open(args.memory_only, "w") as f:
            json.dump(mem, f)
        return

    cpu = device.type == "cpu"
    repeats = args.repeats or (5 if cpu else 50)
    step_repeats = args.step_repeats or (2 if cpu else 20)
    rows = []
    for name, shape, run, logits_bytes in cases:
        step = name.startswith("resnet")
        t = time_it(run, device, warmup=1 if (step and cpu) else 3, repeats=step_repeats if step else repeats)
        mem = None if cpu else cuda_peak_extra(run)
        rows.append(dict(name=name, shape=shape, logits_bytes=logits_bytes, peak_extra_bytes=mem, **t))
        print(f"{name:18s} {shape:24s} {t['median_s'] * 1e3:10.2f} ms", flush=True)
    if cpu:
        mem = memory_pass(args)
        for r in rows:
            r["peak_extra_bytes"] = mem.get(f"{r['name']}|{r['shape']}")
    step_s = rows[-1]["median_s"]
    for r in rows[:-1]:
        r["share_of_step"] = r["median_s"] / (r["median_s"] + step_s)
    env = dict(
        device=torch.cuda.get_device_name() if not cpu else f"{_cpu_model()} ({os.cpu_count()} cores)",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        tf32=False,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        repeats=repeats,
        step_repeats=step_repeats,
    )
    md = _markdown(env, rows)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "contrastive.json"), "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
        with open(os.path.join(args.out, "contrastive.md"), "w") as f:
            f.write(md)


def _markdown(env, rows):
    out = [
        f"# Contrastive losses vs a training step ({env['device']})",
        "",
        f"torch {env['torch']}, {env['threads']} threads, TF32 off, {env['date']}; median of {env['repeats']} "
        f"runs (ResNet-18 step: {env['step_repeats']}) after warm-up, p20-p80 in brackets. Forward+backward. "
        "'share' = loss / (loss + ResNet-18 forward+backward of one view of the same batch), an upper bound "
        "on the loss's share of a real two-view step. Peak = extra memory of one call.",
        "",
        "| row | shape | median ms [p20-p80] | peak MiB | logits MiB | share of step |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = "-" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.1f}"
        lg = "-" if r["logits_bytes"] is None else f"{r['logits_bytes'] / 2**20:.1f}"
        share = f"{r['share_of_step'] * 100:.1f} %" if "share_of_step" in r else "-"
        out.append(
            f"| {r['name']} | {r['shape']} | {r['median_s'] * 1e3:.2f} [{r['p20_s'] * 1e3:.2f}-"
            f"{r['p80_s'] * 1e3:.2f}] | {mem} | {lg} | {share} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
