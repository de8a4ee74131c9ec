"""Throughput of the batched two-view augmentation, alone and with a training step.

    python benchmarks/bench_input_pipeline.py --backbone resnet18 --batch-size 256 --device cuda
    python benchmarks/bench_input_pipeline.py --backbone resnet10 --width 16 --crop 28 --threads 2

Reports images/s (one "image" = one source image turned into two views).
Synthetic uint8 images are used so the benchmark needs no dataset.

    python benchmarks/bench_input_pipeline.py --sources [--sizes 32 224] [--workers 0 1 2] [--out DIR]

compares the data sources instead (``data.source``: memory vs stream, see
``input_sources.py``): images/s each delivers to the training step, on this
CPU, for each worker count, and what one GPU step would need.
"""

from __future__ import annotations

import argparse
import time

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--method", default="vicreg")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sources", action="store_true", help="compare data.source memory vs stream (input_sources.py)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224], help="--sources: training crop sizes")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="--sources: worker counts (0..cores)")
    p.add_argument("--images", type=int, default=None, help="--sources: images per size (default 2048 / 384)")
    p.add_argument("--out", default=None, help="--sources: folder for input_sources.{md,json}")
    a = p.parse_args()
    if a.sources:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from input_sources import run_sources

        run_sources(a)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    from sslext.app.methods import build_method
    from sslext.data import DATASET_STATS, TwoViewAugment, ViewAugment
    from sslext.models import build_backbone

    dev = torch.device(a.device)
    x = torch.randint(0, 256, (a.batch_size, 3, a.crop, a.crop), dtype=torch.uint8)
    x = x.pin_memory() if dev.type == "cuda" else x
    aug = TwoViewAugment(
        [ViewAugment(crop_size=a.crop, blur_prob=0.5), ViewAugment(crop_size=a.crop, blur_prob=0.5, solarize_prob=0.2)],
        *DATASET_STATS["cifar10"],
    )

    def aug_step():
        return aug(x.to(dev, non_blocking=True))

    for _ in range(2):
        aug_step()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(a.iters):
        aug_step()
    _sync(dev)
    aug_ips = a.iters * a.batch_size / (time.perf_counter() - t)

    torch.manual_seed(0)
    kw = {"projector": [2048, 2048, 2048]} if a.method != "tico" else {}
    m = build_method(a.method, build_backbone(a.backbone, True, a.width), **kw).to(dev)
    amp = dev.type == "cuda"
    if amp:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        views = aug_step()
        if amp:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = m.training_step(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        train_step()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(a.iters):
        train_step()
    _sync(dev)
    train_ips = a.iters * a.batch_size / (time.perf_counter() - t)
    print(
        f"device={dev} threads={torch.get_num_threads()} batch={a.batch_size} crop={a.crop} "
        f"backbone={a.backbone}(w{a.width}) method={a.method}"
    )
    print(f"augmentation only (2 views): {aug_ips:9.0f} images/s")
    print(f"augmentation + train step : {train_ips:9.0f} images/s")


if __name__ == "__main__":
    main()
