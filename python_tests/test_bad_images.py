"""data.on_bad_image (error | skip), and every common image mode loads as RGB."""

import json
import warnings

import numpy as np
import pytest
import torch

from sslext.app.config import ConfigError, load_config
from sslext.data import DatasetError, load_image_folder


def _good(d, n=3, size=(20, 24)):
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"ok{i}.png")


def _folder_with_bad(root):
    _good(root / "a")
    _good(root / "b")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "b" / "notes.png").write_text("this is text")
    return root


def test_default_error_names_the_file(tmp_path):
    root = _folder_with_bad(tmp_path / "f")
    with pytest.raises(DatasetError, match=r"broken\.jpg.*cannot decode image.*on_bad_image=skip"):
        load_image_folder(root, 16)


def test_skip_leaves_bad_files_out_and_says_so(tmp_path):
    root = _folder_with_bad(tmp_path / "f")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_image_folder(root, 16, on_bad_image="skip")
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert sorted(ds.skipped) == ["a/broken.jpg", "b/notes.png"]
    msgs = [str(x.message) for x in w]
    assert sum("broken.jpg" in m and "skipped" in m for m in msgs) == 1
    assert sum("notes.png" in m and "skipped" in m for m in msgs) == 1
    # From the cache: the same images and the same report.
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = load_image_folder(root, 16, on_bad_image="skip")
    assert torch.equal(again.images, ds.images) and sorted(again.skipped) == sorted(ds.skipped)
    assert sum("skipped" in str(x.message) for x in w) == 2
    # The skip-mode cache never lets error mode pass silently.
    with pytest.raises(DatasetError, match="broken.jpg"):
        load_image_folder(root, 16)


def test_all_bad_is_an_error(tmp_path):
    d = tmp_path / "f" / "a"
    d.mkdir(parents=True)
    (d / "x.png").write_text("nope")
    with pytest.raises(DatasetError, match="none of the 1 images"), pytest.warns(UserWarning, match="x.png"):
        load_image_folder(tmp_path / "f", 16, on_bad_image="skip")


def test_bad_policy_value(tmp_path):
    with pytest.raises(ValueError, match="data.on_bad_image"):
        load_image_folder(tmp_path, 16, on_bad_image="ignore")
    with pytest.raises(ConfigError, match="data.on_bad_image"):
        load_config(None, ["data.on_bad_image=ignore"])


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16"])
def test_image_modes_load_as_rgb(tmp_path, mode):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    if mode == "P":
        im = rgb.quantize(colors=16)
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16))
    else:
        im = rgb.convert(mode)
    ext = "jpg" if mode == "CMYK" else ("tiff" if mode == "I;16" else "png")
    d = tmp_path / "f" / "c"
    d.mkdir(parents=True)
    im.save(d / f"x.{ext}")
    with Image.open(d / f"x.{ext}") as saved:
        assert saved.mode == mode
        expected = np.asarray(saved.convert("RGB")).transpose(2, 0, 1)
    ds = load_image_folder(tmp_path / "f", 16)
    assert ds.images.shape == (1, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images[0].numpy(), expected)
    if mode in ("L", "LA"):
        assert torch.equal(ds.images[0, 0], ds.images[0, 1]) and torch.equal(ds.images[0, 1], ds.images[0, 2])


def test_run_summary_reports_skipped_images(tmp_path):
    from sslext.train import train

    root = tmp_path / "data"
    for split, n in (("train", 8), ("val", 4)):
        _good(root / split / "a", n, (24, 24))
        _good(root / split / "b", n, (24, 24))
    (root / "train" / "a" / "broken.jpg").write_bytes(b"garbage")
    cfg = load_config(
        None,
        [
            "data.dataset=image_folder",
            f"data.root={root}",
            "data.image_size=16",
            "data.on_bad_image=skip",
            "model.backbone=resnet10",
            "model.width=8",
            "method.projector=[16,16]",
            "optim.batch_size=8",
            "optim.warmup_epochs=0",
            "train.epochs=1",
            "train.progress=false",
            f"train.out_dir={tmp_path / 'runs'}",
            "eval.offline_epochs=2",
            "eval.knn_k=4",
            "augment.view1.crop_size=16",
            "augment.view2.crop_size=16",
            "name=r",
            "train.device=cpu",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = train(cfg)
    assert s["skipped_images"] == 1
    recs = [json.loads(l) for l in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    data = [r for r in recs if r["kind"] == "data"]
    assert data == [{"kind": "data", "split": "train", "skipped_images": 1, "skipped": ["a/broken.jpg"]}]
