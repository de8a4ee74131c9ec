"""Workers of test_distributed_data.py (a module of its own so spawned ranks can import it)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from dist_helpers import process_group

N_PER_BATCH = 8


def write_fake_cifar10(root: Path) -> None:
    """What the real downloader leaves: cifar-10-batches-py/ with random images (written slowly, as it is)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, N_PER_BATCH).tolist(),
        }
        (d / name).write_bytes(pickle.dumps(batch, protocol=4))
        time.sleep(0.05)  # a rank that did not wait would find a half-extracted folder
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=4))


def download_worker(rank: int, world: int, init_file: str, out_dir: str, fail: bool) -> None:
    """build_everything with data.download=true and the downloader replaced by a counting fake."""
    from sslext.app.config import load_config
    from sslext.app.training import build_everything
    from sslext.data import datasets as D

    out = Path(out_dir)

    def fake_download(root: Path, name: str) -> None:
        with open(out / "download_calls", "a") as f:
            f.write(f"{rank}\n")
        if fail:
            raise D.DatasetError(f"{name}: no network here")
        write_fake_cifar10(root)

    D._download_cifar = fake_download
    cfg = load_config(
        None,
        [
            "data.dataset=cifar10",
            f"data.root={out / 'data'}",
            "data.download=true",
            "model.backbone=resnet10",
            "model.width=4",
            "method.projector=[16,16]",
        ],
    )
    res: Dict[str, Any] = {}
    with process_group(rank, world, init_file):
        try:
            parts = build_everything(cfg, torch.device("cpu"))
            res["n_train"], res["n_test"] = len(parts["train_ds"]), len(parts["test_ds"])
        except D.DatasetError as e:
            res["error"] = str(e)
    torch.save(res, out / f"rank{rank}.pt")


def precision_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """A Trainer with train.amp=auto on 2 CPU ranks (SyncBatchNorm, gathered loss): the measurement must
    not deadlock, and both ranks must take rank 0's precision."""
    import os

    from sslext.app.config import load_config
    from sslext.app.training import Trainer

    out = Path(out_dir)
    os.environ["SSLEXT_CACHE_DIR"] = str(out / "cache")
    res: Dict[str, Any] = {}
    with process_group(rank, world, init_file):
        for run in ("first", "cached"):
            cfg = load_config(
                None,
                [
                    "data.dataset=synthetic",
                    "model.backbone=resnet10",
                    "model.width=4",
                    "method.projector=[16,16]",
                    "optim.batch_size=16",
                    "augment.view1.crop_size=8",
                    "augment.view2.crop_size=8",
                    "train.amp=auto",
                    "train.device=cpu",
                    "train.progress=false",
                    f"train.out_dir={out / run}",
                ],
            )
            p = Trainer(cfg).precision
            res[run] = (p.name, p.reason, p.rates)
    torch.save(res, out / f"prec{rank}.pt")
