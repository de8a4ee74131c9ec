"""Synthetic image folders and the 2-rank worker of test_streaming.py (a module of its own so spawned
ranks can import it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

# A tiny streamed run: 3 classes x 8 images of 20-28 px, crops to 16 px.
TINY_STREAM = [
    "data.dataset=image_folder",
    "data.source=stream",
    "data.workers=0",
    "model.backbone=resnet10",
    "model.width=4",
    "method.name=vicreg",
    "method.projector=[16,16]",
    "optim.batch_size=8",
    "optim.warmup_epochs=0",
    "train.device=cpu",
    "train.threads=1",
    "train.progress=false",
    "train.log_every=1",
    "train.epochs=2",
    "eval.final=false",
    "eval.online_probe=true",
    "eval.every=100",
    "eval.knn_train_limit=8",
    "augment.view1.crop_size=16",
    "augment.view2.crop_size=16",
    "name=run",
]


def write_folder(root: Path, classes: int = 3, per_class: int = 8, seed: int = 0, split: str = "train") -> Path:
    """``root/<split>/c<k>/<i>.png|jpg``: random images of varied sizes (PNG and JPEG alternate)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / split
    for c in range(classes):
        d = base / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(20, 29)), int(rng.integers(20, 29))
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img.save(d / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))
    return root


def record_batches(trainer) -> List[Dict[str, torch.Tensor]]:
    """Wrap ``trainer.stream.next_batch`` to keep every (views, labels) it hands out."""
    seen: List[Dict[str, torch.Tensor]] = []
    inner = trainer.stream.next_batch

    def spy():
        x, y = inner()
        seen.append({"views": x.clone(), "labels": y.clone()})
        return x, y

    trainer.stream.next_batch = spy
    return seen


def stream_rank_worker(rank: int, world: int, init_file: str, out_dir: str, overrides: List[str]) -> None:
    """Train a few streamed steps on ``world`` gloo ranks; save this rank's batches."""
    from dist_helpers import process_group

    from sslext.app.config import load_config
    from sslext.train import Trainer

    out = Path(out_dir)
    res: Dict[str, Any] = {}
    with process_group(rank, world, init_file):
        try:
            cfg = load_config(None, [*TINY_STREAM, *overrides, f"train.out_dir={out / f'w{world}'}"])
            t = Trainer(cfg)
            res["batches"] = record_batches(t)
            res["summary"] = t.fit()
        except Exception as e:  # reported to the test process
            res["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            torch.save(res, out / f"rank{rank}.pt")
