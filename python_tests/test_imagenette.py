"""Imagenette / Imagewoof on a small synthetic folder of the real layout, and the article's recipe."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sslext.app.config import ConfigError, load_config
from sslext.data import DatasetError, build_dataset
from sslext.data.imagenette import IMAGENETTE_CLASSES, IMAGEWOOF_CLASSES, load_imagenette
from sslext.evaluate import stratified_subset

REPO = Path(__file__).resolve().parents[1]
NETTE = REPO / "configs" / "mocov2_resnet18_imagenette.yaml"
WOOF = REPO / "configs" / "mocov2_resnet18_imagewoof.yaml"


def make_folder(root: Path, name="imagenette", variant="160px", n_train=6, n_val=2, seed=0):
    """``root/<name>2-160/{train,val}/<wnid>/*.JPEG`` with class-coloured, non-square images."""
    from PIL import Image

    wnids = sorted(IMAGENETTE_CLASSES if name == "imagenette" else IMAGEWOOF_CLASSES)
    folder = root / (f"{name}2" + ("" if variant == "full" else f"-{variant[:-2]}"))
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, w in enumerate(wnids):
            d = folder / split / w
            d.mkdir(parents=True)
            for i in range(n):
                base = np.array([25 * c, 255 - 25 * c, (80 * c) % 256], dtype=np.float64)
                arr = np.clip(base + rng.normal(0, 30, (40 + 3 * i, 52, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{w}_{i}.JPEG", quality=90)
    return folder


def test_loader_layout_labels_and_cache(tmp_path):
    folder = make_folder(tmp_path)
    tr = load_imagenette(tmp_path, "imagenette", "train", "160px", image_size=32)
    te = load_imagenette(folder, "imagenette", "test", "160px", image_size=32)  # the variant folder itself works
    assert tr.images.shape == (60, 3, 32, 32) and te.images.shape == (20, 3, 32, 32)
    assert tr.classes[0] == "tench" and tr.classes == te.classes and len(tr.classes) == 10
    assert tr.labels.tolist() == [c for c in range(10) for _ in range(6)]
    assert list((folder / "train" / ".sslext_cache").glob("*.pt"))  # decoded once, cached
    again = load_imagenette(tmp_path, "imagenette", "train", "160px", image_size=32)
    assert torch.equal(again.images, tr.images)


def test_val_missing_a_class_keeps_label_numbers(tmp_path):
    folder = make_folder(tmp_path, n_train=2, n_val=1)
    import shutil

    shutil.rmtree(folder / "val" / "n01440764")  # "tench", label 0
    te = load_imagenette(tmp_path, "imagenette", "test", image_size=16)
    assert te.labels.tolist() == list(range(1, 10)) and te.classes[1] == "English springer"


def test_imagewoof_and_variants(tmp_path):
    make_folder(tmp_path, "imagewoof", "320px", n_train=1, n_val=1)
    ds = build_dataset("imagewoof", "train", str(tmp_path), image_size=16, variant="320px")
    assert ds.classes[0] == "Shih-Tzu" and len(ds) == 10
    with pytest.raises(DatasetError, match="imagewoof2-160"):
        build_dataset("imagewoof", "train", str(tmp_path), image_size=16, variant="160px")
    with pytest.raises(ValueError, match="data.variant"):
        build_dataset("imagenette", "train", str(tmp_path), image_size=16, variant="64px")


def test_missing_dataset_names_the_layout(tmp_path):
    with pytest.raises(DatasetError) as ei:
        load_imagenette(tmp_path, "imagenette", "train", "160px")
    msg = str(ei.value)
    assert "imagenette2-160" in msg and "train/<wnid>" in msg and "data.download=true" in msg


def test_ten_percent_split_is_stratified_and_seeded(tmp_path):
    make_folder(tmp_path, n_train=20, n_val=1)
    ds = load_imagenette(tmp_path, "imagenette", "train", image_size=16)
    a, b = stratified_subset(ds.labels, 0.1, seed=0), stratified_subset(ds.labels, 0.1, seed=0)
    assert torch.equal(a, b) and len(a) == 20
    assert torch.bincount(ds.labels[a], minlength=10).tolist() == [2] * 10
    assert not torch.equal(a, stratified_subset(ds.labels, 0.1, seed=1))


# ----------------------------------------------------------------------------- download path, no network
class _FakeImagenette:
    calls = []

    def __init__(self, root, split="train", size="full", download=False, **kw):
        type(self).calls.append(dict(root=root, split=split, size=size, download=download, **kw))
        make_folder(Path(root), "imagenette", size, n_train=1, n_val=1)


def test_download_calls_torchvision_imagenette(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    _FakeImagenette.calls = []
    monkeypatch.setattr(tvd, "Imagenette", _FakeImagenette)
    ds = build_dataset("imagenette", "train", str(tmp_path / "dl"), download=True, image_size=16, variant="160px")
    assert _FakeImagenette.calls == [dict(root=str(tmp_path / "dl"), split="train", size="160px", download=True)]
    assert len(ds) == 10
    build_dataset("imagenette", "test", str(tmp_path / "dl"), download=True, image_size=16, variant="160px")
    assert len(_FakeImagenette.calls) == 1  # present now: not fetched again


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvd, "Imagenette", offline)
    with pytest.raises(DatasetError) as ei:
        build_dataset("imagenette", "train", str(tmp_path), download=True, variant="320px")
    msg = str(ei.value)
    assert "data.download=true could not fetch" in msg and "URLError" in msg and "imagenette2-320" in msg


def test_imagewoof_download_says_torchvision_has_none(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, "Imagenette", lambda *a, **k: pytest.fail("must not be called for imagewoof"))
    with pytest.raises(DatasetError, match="no Imagewoof downloader"):
        build_dataset("imagewoof", "train", str(tmp_path), download=True)


def test_cifar_download_uses_torchvision_archive_fetch(tmp_path, monkeypatch):
    """data.download for CIFAR fetches the archive only; the batches are then read by our restricted unpickler."""
    import pickle
    import urllib.error

    import torchvision.datasets.utils as tvu

    calls = []

    def fake_fetch(url, download_root, filename=None, md5=None, **kw):
        calls.append((url, download_root, filename, md5))
        d = Path(download_root) / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (d / n).write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}))

    monkeypatch.setattr(tvu, "download_and_extract_archive", fake_fetch)
    ds = build_dataset("cifar10", "train", str(tmp_path), download=True)
    import torchvision.datasets as tvd

    assert calls == [(tvd.CIFAR10.url, str(tmp_path), tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5)]
    assert len(ds) == 10

    def offline(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DatasetError, match="data.download=true could not fetch") as ei:
        build_dataset("cifar100", "train", str(tmp_path / "none"), download=True)
    assert "cifar-100-python" in str(ei.value)


# ----------------------------------------------------------------------------- the article's recipe
@pytest.mark.parametrize("path", [NETTE, WOOF])
def test_recipe_holds_the_article_hyperparameters(path):
    cfg = load_config(path)
    m, o = cfg["method"], cfg["optim"]
    assert (m["name"], m["projector"], m["queue_size"], m["temperature"]) == ("mocov2", [100, 50, 25], 8192, 0.05)
    assert m["momentum"] == m["final_momentum"] == 0.999 and m["symmetric"] is False
    assert cfg["model"] == {"backbone": "resnet18", "cifar_stem": False, "width": 64}
    assert (o["name"], o["batch_size"], o["lr"], o["weight_decay"]) == ("adam", 256, 1e-3, 1e-6)
    assert o["lr"] * o["final_lr_factor"] == pytest.approx(1e-5) and o["warmup_epochs"] == 0
    assert cfg["eval"]["label_fraction"] == 0.1
    assert cfg["data"]["dataset"] == path.stem.split("_")[-1]
    for v in ("view1", "view2"):
        a = cfg["augment"][v]
        assert a["crop_size"] == cfg["data"]["image_size"] == 128
        assert a["jitter_prob"] > 0 and a["gray_prob"] == a["blur_prob"] == a["solarize_prob"] == 0


def test_recipe_head_is_the_article_mlp():
    from sslext.app.methods import build_method
    from sslext.models import build_backbone

    cfg = load_config(NETTE)
    bb = build_backbone("resnet18", cifar_stem=False)
    assert bb.conv1.kernel_size == (7, 7) and isinstance(bb.maxpool, torch.nn.MaxPool2d)
    m = build_method("mocov2", bb, **{k: v for k, v in cfg["method"].items() if k != "name"})
    layers = [type(l).__name__ for l in m.projector]
    assert layers == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert [l.out_features for l in m.projector if isinstance(l, torch.nn.Linear)] == [100, 50, 25]
    assert m.queue.keys.shape == (8192, 25)


def _small(cfg, root, out, **extra):
    cfg = copy.deepcopy(cfg)
    over = {
        "data.root": str(root),
        "optim.batch_size": 8,
        "train.epochs": 1,
        "train.out_dir": str(out),
        "train.device": "cpu",
        "train.amp": False,
        "train.progress": False,
        "eval.offline_epochs": 3,
        "eval.knn_k": 5,
        "eval.every": 1,
        "train.log_every": 1,
    }
    over.update(extra)
    from sslext.app.config import apply_override, validate

    for k, v in over.items():
        apply_override(cfg, f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
    return validate(cfg)


def test_recipe_trains_at_its_resolution_resumes_and_probes(tmp_path):
    from sslext.train import Trainer, load_checkpoint_file, train

    make_folder(tmp_path / "data", n_train=2, n_val=1)  # 20 train images: 2 steps of 8 per epoch
    base = load_config(NETTE)
    full = train(_small(base, tmp_path / "data", tmp_path / "full"))
    assert full["finished"] and full["global_step"] == 2
    run = Path(full["run_dir"])
    res = json.loads((run / "final_eval.json").read_text())
    assert {"linear_acc", "linear_acc_10pct", "knn_acc"} <= set(res)
    assert 0 <= res["linear_acc_10pct"] <= 100
    ck = load_checkpoint_file(run / "last.pt")
    assert ck["method"]["queue.keys"].shape == (8192, 25)

    # The same run cut after its first step, then resumed: same weights as the uninterrupted one.
    cut = _small(base, tmp_path / "data", tmp_path / "cut", **{"train.max_steps": 1})
    first = Trainer(cut).fit()
    assert first["global_step"] == 1 and not first["finished"]
    resumed = train(_small(base, tmp_path / "data", tmp_path / "cut"), resume=True)
    assert resumed["finished"] and resumed["global_step"] == 2
    a = load_checkpoint_file(tmp_path / "cut" / base["name"] / "last.pt")["method"]
    for k, v in ck["method"].items():
        assert torch.equal(v, a[k]), k


def test_recipe_sees_images_at_128px(tmp_path, monkeypatch):
    from sslext.app.methods.mocov2 import MoCoV2
    from sslext.train import Trainer

    make_folder(tmp_path / "data", n_train=1, n_val=1)
    seen = []
    real = MoCoV2.training_step

    def spy(self, views):
        seen.append([tuple(v.shape) for v in views])
        return real(self, views)

    monkeypatch.setattr(MoCoV2, "training_step", spy)
    cfg = _small(load_config(NETTE), tmp_path / "data", tmp_path / "o", **{"train.max_steps": 1})
    Trainer(cfg).fit()
    assert seen == [[(8, 3, 128, 128), (8, 3, 128, 128)]]


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="data.variant"):
        load_config(NETTE, ["data.variant=80px"])


def test_adam_is_coupled_l2_on_every_parameter_when_asked():
    from sslext.optim import build_optimizer

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = build_optimizer("adam", net, lr=1e-3, weight_decay=1e-6, exclude_bias_norm=False)
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 1e-6 and not opt.param_groups[0].get("decoupled_weight_decay")
