"""``bench_input_pipeline.py --sources``: images/s of data.source memory vs stream on this CPU.

For each training size a synthetic JPEG folder is written to a temporary
directory: at 32 px, 32 x 32 images (CIFAR's size); larger sizes, 500 x 375
images of smooth random content (low-resolution noise upsampled, plus fine
noise; JPEG quality 90). Measured per size:

* ``memory``: the one-time decode into the in-memory tensor (images/s of
  ``load_image_folder``, which resizes the short side and center-crops to the
  size), then the per-step host cost: gathering a random batch from the
  tensor (what ``BatchStager`` does on the CPU).
* ``stream``: ``StreamLoader`` over the folder, for each worker count: decode +
  two random resized crops + flips per image on the workers, collated into
  uint8 batches. Timed from the first batch to the last of a pass (worker
  start-up excluded).

Both paths then run the same photometric augmentation on the training device,
not measured here. The GPU side is computed, not measured: ResNet-50's
forward FLOPs counted by ``torch.utils.flop_counter`` at the size, times 3 for
forward + backward, times 2 views, against an H100's dense BF16 peak at an
assumed model FLOPs utilisation; the script prints the arithmetic.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

# NVIDIA H100 SXM5 datasheet: 989 TFLOPS dense BF16 tensor-core peak (1979 with sparsity). A spec, not a measurement.
H100_BF16_DENSE_TFLOPS = 989.0
# Assumed model FLOPs utilisation of a ResNet-50 training step (convolutions, BN, ReLU, channels_last, bf16).
ASSUMED_MFU = 0.40
REPEATS = 3


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def _loadavg() -> List[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _write_folder(root: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = (32, 32) if size <= 32 else (500, 375)
    for c in range(4):
        (root / "train" / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        arr = np.asarray(low, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
        img.save(root / "train" / f"c{i % 4}" / f"{i:06d}.jpg", quality=90)


def _memory(root: Path, size: int, batch: int) -> Dict[str, float]:
    from sslext.data import load_image_folder

    t = time.perf_counter()
    ds = load_image_folder(root / "train", size, cache_dir=root / "cache")
    decode = len(ds) / (time.perf_counter() - t)
    g = torch.Generator().manual_seed(0)
    steps = max(20, 4096 // batch)
    idx = [torch.randint(0, len(ds), (batch,), generator=g) for _ in range(steps)]
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        for i in idx:
            ds.images[i].contiguous()
        times.append(time.perf_counter() - t)
    return {"decode_once_images_per_s": decode, "per_step_images_per_s": steps * batch / float(np.median(times))}


def _stream(root: Path, size: int, batch: int, workers: int) -> float:
    """Median over REPEATS passes (this machine's other jobs make a single pass noisy)."""
    return float(np.median([_stream_pass(root, size, batch, workers) for _ in range(REPEATS)]))


def _stream_pass(root: Path, size: int, batch: int, workers: int) -> float:
    from sslext.data.folder import CropSpec, StreamingImageFolder
    from sslext.data.stream import StreamLoader

    ds = StreamingImageFolder(root / "train", [CropSpec(size, 0.08, 1.0, 0.5)] * 2, seed=0)
    loader = StreamLoader(ds, batch, 0, torch.device("cpu"), workers=workers, prefetch=2)
    loader.start(0, 0)
    steps = len(loader.sampler)
    loader.next_batch()
    t = time.perf_counter()
    for _ in range(steps - 1):
        loader.next_batch()
    return (steps - 1) * batch / (time.perf_counter() - t)


def _resnet50_forward_flops(size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from sslext.models import build_backbone

    # The stem the recipes use: CIFAR's (3x3, no max-pool) at 32 px, ImageNet's above.
    net = build_backbone("resnet50", size <= 64, 64, image_size=size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, size, size))
    return int(fc.get_total_flops())


def run_sources(a: Any) -> None:
    cores = os.cpu_count() or 1
    # One intra-op thread: on this shared 2-core machine two OpenMP threads spin-wait for a busy core, and
    # the in-memory gather ran ~50x slower with 2 threads than with 1 (5,000 vs 290,000 images/s at 32 px).
    torch.set_num_threads(1)
    workers = a.workers if a.workers is not None else list(range(cores + 1))
    batch = 64
    env = {
        "cpu": _cpu_model(),
        "cores": cores,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_before": _loadavg(),
        "note": "a background training sweep and other jobs share these cores: absolute rates are low and noisy",
    }
    rows: List[Dict[str, Any]] = []
    gpu: List[Dict[str, Any]] = []
    for size in a.sizes:
        n = a.images or (2048 if size <= 64 else 384)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            _write_folder(root, n, size)
            mem = _memory(root, size, batch)
            rows.append({"size": size, "images": n, "source": "memory", "workers": "-", **mem})
            for w in workers:
                ips = _stream(root, size, batch, w)
                rows.append({"size": size, "images": n, "source": "stream", "workers": w, "images_per_s": ips})
        flops = _resnet50_forward_flops(size)
        per_image = 3 * 2 * flops  # forward + backward (~2x forward), two views
        need = ASSUMED_MFU * H100_BF16_DENSE_TFLOPS * 1e12 / per_image
        gpu.append(
            {
                "size": size,
                "resnet50_forward_flops": flops,
                "train_flops_per_image": per_image,
                "h100_images_per_s": need,
            }
        )
    env["loadavg_after"] = _loadavg()
    md = _markdown(env, rows, gpu, workers, a.images)
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "input_sources.md").write_text(md)
        (out / "input_sources.json").write_text(json.dumps({"env": env, "rows": rows, "gpu": gpu}, indent=1) + "\n")


def _markdown(
    env: Dict[str, Any], rows: List[Dict[str, Any]], gpu: List[Dict[str, Any]], workers: List[int], images: Any
) -> str:
    cmd = "python benchmarks/bench_input_pipeline.py --sources --sizes " + " ".join(str(g["size"]) for g in gpu)
    cmd += " --workers " + " ".join(map(str, workers)) + (f" --images {images}" if images else "")
    cmd += " --out benchmarks/results/cpu"
    out = [
        "# Input pipeline: data.source memory vs stream (CPU)",
        "",
        f"`{cmd}`",
        "",
        f"CPU: {env['cpu']}, {env['cores']} cores, torch {env['torch']}. Load average "
        f"{env['loadavg_before']} before, {env['loadavg_after']} after: {env['note']}.",
        "torch intra-op threads: 1 (the DataLoader workers use 1 each as well).",
        "Batch 64, two views per image (random resized crop 0.08-1 + flip on the workers for `stream`);",
        f"per-step and stream rates are the median of {REPEATS} passes, the one-time decode a single pass.",
        "",
        "| size | images | source | workers | images/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["source"] == "memory":
            out.append(
                f"| {r['size']} | {r['images']} | memory: decode once | - | {r['decode_once_images_per_s']:,.0f} |"
            )
            out.append(
                f"| {r['size']} | {r['images']} | memory: per step (gather) | - | {r['per_step_images_per_s']:,.0f} |"
            )
        else:
            out.append(f"| {r['size']} | {r['images']} | stream | {r['workers']} | {r['images_per_s']:,.0f} |")
    out += ["", "## What one GPU step needs (computed, not measured)", ""]
    for g in gpu:
        out.append(
            f"* {g['size']} px: ResNet-50 forward = {g['resnet50_forward_flops'] / 1e9:.2f} GFLOP per image "
            f"(torch.utils.flop_counter, {'CIFAR' if g['size'] <= 64 else 'ImageNet'} stem); a training step ~ 3 x forward (backward ~ 2 x forward) "
            f"x 2 views = {g['train_flops_per_image'] / 1e9:.1f} GFLOP per image. One H100 SXM at "
            f"{H100_BF16_DENSE_TFLOPS:.0f} TFLOPS dense BF16 (datasheet) x {ASSUMED_MFU:.0%} assumed utilisation "
            f"= {ASSUMED_MFU * H100_BF16_DENSE_TFLOPS:.0f} TFLOPS -> {g['h100_images_per_s']:,.0f} images/s to feed."
        )
    for g in gpu:
        one = [
            r["images_per_s"] for r in rows if r["source"] == "stream" and r["size"] == g["size"] and r["workers"] == 0
        ]
        if one:
            out.append(
                f"* {g['size']} px: the stream path decoded and cropped {one[0]:,.0f} images/s in one process here, so "
                f"one H100 would need ~{g['h100_images_per_s'] / one[0]:,.0f} such processes (cores, at this machine's "
                "contended per-core speed); an uncontended core is faster, and GPU decoding (DALI, nvJPEG) is the "
                "other way."
            )
    return "\n".join(out) + "\n"
