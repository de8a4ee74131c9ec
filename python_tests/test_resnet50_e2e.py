"""ResNet-50, the mission's backbone, end to end on a CIFAR-10-layout subset:
the shipped Barlow Twins recipe (CIFAR stem, 2048-2048-2048 projector) trains a
few steps, checkpoints, resumes to the end of the epoch exactly where an
uninterrupted run ends, and its frozen backbone goes through the linear probe."""

import pickle
from pathlib import Path

import numpy as np
import torch

from sslext.app.config import load_config
from sslext.app.training import Trainer, evaluate_checkpoint, load_checkpoint_file

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "barlow_twins_resnet50_cifar10.yaml"


def _write_cifar10(root, n=8):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, n)],
        }
        (d / name).write_bytes(pickle.dumps(obj))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def _cfg(root, out, *extra):
    return load_config(
        RECIPE,
        [
            f"data.root={root}",
            f"train.out_dir={out}",
            "name=r50",
            "optim.batch_size=8",
            "train.epochs=1",
            "optim.warmup_epochs=0",
            "train.threads=2",
            "train.progress=false",
            "eval.offline_epochs=2",
            "eval.knn_k=5",
            "eval.diag_samples=16",
            "eval.batch_size=16",
            "train.device=cpu",
            "train.amp=false",
            *extra,
        ],
    )


def test_resnet50_trains_checkpoints_resumes_and_probes(tmp_path):
    _write_cifar10(tmp_path / "data")  # 40 training images: 5 steps of 8
    ref = Trainer(_cfg(tmp_path / "data", tmp_path / "ref", "eval.final=false")).fit()
    assert ref["finished"] and ref["global_step"] == 5
    cut = Trainer(_cfg(tmp_path / "data", tmp_path / "cut", "train.max_steps=2")).fit()
    assert cut["global_step"] == 2 and not cut["finished"]
    ck = load_checkpoint_file(tmp_path / "cut" / "r50" / "last.pt")
    assert ck["config"]["model"]["backbone"] == "resnet50" and ck["global_step"] == 2
    assert ck["method"]["backbone.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    done = Trainer(_cfg(tmp_path / "data", tmp_path / "cut", "eval.final=false"), resume=True).fit()
    assert done["finished"] and done["global_step"] == 5
    a = load_checkpoint_file(tmp_path / "ref" / "r50" / "last.pt")["method"]
    b = load_checkpoint_file(tmp_path / "cut" / "r50" / "last.pt")["method"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    res = evaluate_checkpoint(tmp_path / "cut" / "r50" / "last.pt", output=tmp_path / "eval.json")
    for k in ("linear_acc", "linear_acc_10pct", "knn_acc", "backbone_rankme", "projector_rankme"):
        assert k in res and np.isfinite(res[k])
    assert res["backbone_dim"] == 2048.0 and (tmp_path / "eval.json").exists()
