"""Training throughput of the trainer's own step: images/s of ``Trainer.train_step``,
with the host-device synchronisations and dispatched ATen ops of one step.

Each backbone trains VICReg (LARS, online probe: the default recipe) from a
config on synthetic CIFAR-sized images; the timed call is
``Trainer.train_step`` itself (batch indexing, augmentation, forward, loss,
backward, non-finite check, optimizer, probe, statistics), on steps that do
not log. One further step runs under ``sslext.app.training.dispatch_count``'s
counter (not timed): ``syncs/step`` are the points where the host waits for
the device, ``ops/step`` everything the host dispatches, ``optimizer ops``
those of one ``optimizer.step()``.

    python benchmarks/bench_throughput.py --device cuda --backbones resnet18,resnet50 --batch-size 256
    python benchmarks/bench_throughput.py --device cpu --backbones resnet18 --batch-size 64 --iters 5

Before/after comparisons in one run, rounds interleaved so a change in the
machine's load hits both sides alike (each tree needs its extension built in
place; the counter is loaded from this file's repository, whatever tree is
timed):

    python benchmarks/bench_throughput.py --device cpu --tree before=/path/a --tree after=/path/b --rounds 3
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _counter_class():
    # By file path: the timed tree may be an older checkout without the module.
    path = os.path.join(ROOT, "sslext", "training", "dispatch_count.py")
    spec = importlib.util.spec_from_file_location("_bench_dispatch_count", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.DispatchCounter


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def build_trainer(args, backbone: str, out_dir: str):
    from sslext.app.config import load_config
    from sslext.train import Trainer

    data = (
        [
            "data.dataset=cifar10",
            f"data.root={args.data}",
            f"data.train_limit={args.batch_size * (args.warmup + args.iters + 2)}",
        ]
        if args.data
        else ["data.dataset=synthetic"]
    )
    over = [
        *data,
        f"model.backbone={backbone}",
        f"optim.batch_size={args.batch_size}",
        f"method.projector=[{args.proj_dim},{args.proj_dim},{args.proj_dim}]",
        f"train.device={args.device}",
        "train.log_every=1000000",
        "train.progress=false",
        "train.epochs=1000",
        f"train.out_dir={out_dir}",
        f"name=bench_{backbone}",
        *args.override,
    ]
    return Trainer(load_config(None, over))


def measure(args, backbone: str) -> dict:

    DispatchCounter = _counter_class()
    with tempfile.TemporaryDirectory() as tmp:
        tr = build_trainer(args, backbone, tmp)
        device = tr.device
        perm = tr._epoch_order()
        # Steps that never reach the epoch's last batch: that one logs.
        nonlog = max(1, tr.steps_per_epoch - 1)

        def step(i):
            tr.step_in_epoch = i % nonlog
            tr.train_step(perm)

        times = []
        for i in range(args.warmup + args.iters):
            _sync(device)
            t0 = time.perf_counter()
            step(i)
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        with DispatchCounter() as c:
            step(0)
        _sync(device)
        with DispatchCounter() as co:
            tr.optimizer.step()
        n_tensors = sum(len(g["params"]) for g in tr.optimizer.param_groups)
    med = statistics.median(times)
    return dict(
        backbone=backbone,
        batch=args.batch_size,
        proj_dim=args.proj_dim,
        device=str(device),
        step_s_median=med,
        step_s_min=min(times),
        step_s_max=max(times),
        images_per_s=args.batch_size / med,
        syncs_per_step=c.syncs,
        ops_per_step=c.ops,
        sync_ops=dict(c.sync_ops),
        optimizer_ops=co.ops,
        param_tensors=n_tensors,
    )


def run_here(args) -> list:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.backbones.split(","):
        row = measure(args, name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_trees(args) -> list:
    """Alternate child processes over the trees, ``--rounds`` times; every child times every backbone."""
    rows = []
    child = [a for a in sys.argv[1:]]
    clean, skip = [], False
    for a in child:  # the child times one tree: drop --tree/--rounds/--out
        if skip:
            skip = False
            continue
        if a in ("--tree", "--rounds", "--out"):
            skip = True
            continue
        if a.startswith(("--tree=", "--rounds=", "--out=")):
            continue
        clean.append(a)
    for r in range(args.rounds):
        for spec in args.tree:
            label, path = spec.split("=", 1)
            env = dict(os.environ, PYTHONPATH=os.path.abspath(path))
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *clean], env=env, cwd=path, capture_output=True, text=True
            )
            if out.returncode:
                sys.exit(f"tree {label} failed:\n{out.stderr[-3000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    row.update(tree=label, round=r)
                    rows.append(row)
                    print(
                        f"round {r} {label:>8} {row['backbone']}: {row['images_per_s']:.1f} img/s "
                        f"(step {row['step_s_median'] * 1e3:.0f} ms), {row['syncs_per_step']} syncs/step, "
                        f"{row['ops_per_step']} ops/step, optimizer {row['optimizer_ops']} ops "
                        f"for {row['param_tensors']} tensors",
                        flush=True,
                    )
    return rows


def summary(rows: list) -> str:
    lines = [
        "| tree | backbone | images/s (median of rounds) | per round | syncs/step | ops/step | optimizer ops |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r.get("tree", "-"), r["backbone"]) for r in rows})
    for tree, bb in keys:
        rs = [r for r in rows if r.get("tree", "-") == tree and r["backbone"] == bb]
        ips = [r["images_per_s"] for r in rs]
        lines.append(
            f"| {tree} | {bb} | {statistics.median(ips):.1f} | {', '.join(f'{v:.1f}' for v in ips)} | "
            f"{rs[-1]['syncs_per_step']} | {rs[-1]['ops_per_step']} | {rs[-1]['optimizer_ops']} "
            f"({rs[-1]['param_tensors']} tensors) |"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backbones", default="resnet18,resnet50")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--proj-dim", type=int, default=2048)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data", default=None, help="folder with cifar-10-batches-py (default: synthetic images)")
    p.add_argument("--override", action="append", default=[], help="extra config override (key=value), repeatable")
    p.add_argument("--tree", action="append", default=[], help="LABEL=PATH of a source tree to time (repeatable)")
    p.add_argument("--rounds", type=int, default=1, help="with --tree: interleaved rounds over the trees")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    load_before = os.getloadavg()
    rows = run_trees(args) if args.tree else run_here(args)
    env = dict(
        device=args.device,
        cpu=cpu_model(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        loadavg_before=load_before,
        loadavg_after=os.getloadavg(),
        wall_s=time.time() - t0,
        args={k: v for k, v in vars(args).items()},
    )
    if args.device == "cuda":
        import torch

        env["gpu"] = torch.cuda.get_device_name()
    print(summary(rows))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
