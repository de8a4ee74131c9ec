"""CPU training throughput in float32 vs channels_last vs bf16 autocast vs both.

One pretraining step as the trainer takes it (two views augmented in a batch,
backbone + projector under the chosen precision, the loss in float32,
backward, LARS step), timed for each setting in the same process, in
interleaved rounds so that a change of machine load hits every setting alike.
Prints images/s (median over rounds, p20-p80) and the ratio to float32, and
writes JSON + markdown.

    python benchmarks/bench_cpu_precision.py --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

SETTINGS = {  # name: (channels_last, bf16 autocast)
    "float32": (False, False),
    "channels_last": (True, False),
    "bf16": (False, True),
    "bf16 + channels_last": (True, True),
}


def main() -> None:
    from sslext.app.methods import build_method
    from sslext.app.training import cpu_has_native_bf16
    from sslext.data import DATASET_STATS, TwoViewAugment
    from sslext.data.augment import ViewAugment
    from sslext.models import build_backbone
    from sslext.optim import build_optimizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet10")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--method", default="vicreg")
    p.add_argument("--projector", default="1024,1024,1024")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round and setting")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for cpu_precision.{json,md}")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (a.batch_size, 3, 32, 32), dtype=torch.uint8)
    aug = TwoViewAugment(
        [ViewAugment(crop_size=32), ViewAugment(crop_size=32, solarize_prob=0.2)], *DATASET_STATS["cifar10"]
    )
    proj = [int(v) for v in a.projector.split(",")]
    models = {}
    for name, (cl, _) in SETTINGS.items():
        torch.manual_seed(0)
        m = build_method(a.method, build_backbone(a.backbone, True, a.width), projector=proj)
        if cl:
            m = m.to(memory_format=torch.channels_last)
        models[name] = (m, build_optimizer("lars", m, 0.3, 1e-4, 0.9, 0.02, True, True))

    def step(name):
        m, opt = models[name]
        cl, bf16 = SETTINGS[name]
        views = aug(x)
        if cl:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = m(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for name in SETTINGS:  # warm-up: allocator, oneDNN primitive caches
        step(name)
    rates = {name: [] for name in SETTINGS}
    for _ in range(a.rounds):
        for name in SETTINGS:
            t = time.perf_counter()
            for _ in range(a.steps):
                step(name)
            rates[name].append(a.steps * a.batch_size / (time.perf_counter() - t))
    base = statistics.median(rates["float32"])
    rows = []
    for name, r in rates.items():
        q = statistics.quantiles(r, n=5) if len(r) > 1 else [r[0]] * 4
        rows.append(
            {
                "setting": name,
                "images_per_s": statistics.median(r),
                "p20": q[0],
                "p80": q[-1],
                "vs_float32": statistics.median(r) / base,
            }
        )
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "load_avg_at_end": os.getloadavg(),
        "backbone": f"{a.backbone} (width {a.width}, CIFAR stem)",
        "method": a.method,
        "projector": proj,
        "batch_size": a.batch_size,
        "steps_per_round": a.steps,
        "rounds": a.rounds,
    }
    lines = [
        f"CPU training step, {info['backbone']}, {a.method} {proj}, batch {a.batch_size}, "
        f"{info['threads']} threads, torch {info['torch']}, native bf16: {info['cpu_native_bf16']}, "
        f"{info['date']}, load average at the end {info['load_avg_at_end'][0]:.1f}",
        "",
        "| setting | images/s (median) | p20-p80 | vs float32 |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['images_per_s']:.0f} | {r['p20']:.0f}-{r['p80']:.0f} | {r['vs_float32']:.2f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "cpu_precision.json"), "w") as f:
            json.dump({"info": info, "rows": rows, "rates": rates}, f, indent=1)
        with open(os.path.join(a.out, "cpu_precision.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
