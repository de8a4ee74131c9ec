import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from sslext.data import DatasetError, build_dataset, load_cifar, load_fashion_mnist, load_image_folder


def _write_cifar10(root, n=20, corrupt=None):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        (d / name).write_bytes(pickle.dumps(obj))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    if corrupt:
        (d / corrupt).write_bytes(b"\x80\x04garbage")
    return d


def test_cifar10_layout_with_arbitrary_checksums(tmp_path):
    d = _write_cifar10(tmp_path)
    tr = load_cifar(tmp_path, "cifar10", "train")
    te = load_cifar(d, "cifar10", "test")  # the batches folder itself works too
    assert tr.images.shape == (100, 3, 32, 32) and tr.images.dtype == torch.uint8
    assert te.images.shape == (20, 3, 32, 32) and te.labels.dtype == torch.int64
    assert tr.classes[3] == "c3"
    raw = pickle.loads((d / "test_batch").read_bytes())
    assert torch.equal(te.images[0], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))


def test_cifar100_layout(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    for name, n in (("train", 12), ("test", 6)):
        (d / name).write_bytes(pickle.dumps({"data": np.zeros((n, 3072), np.uint8), "fine_labels": list(range(n))}))
    ds = load_cifar(tmp_path, "cifar100", "train")
    assert len(ds) == 12 and ds.labels.tolist() == list(range(12))


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(DatasetError, match="cifar-10-batches-py"):
        load_cifar(tmp_path / "nope", "cifar10", "train")
    _write_cifar10(tmp_path, corrupt="data_batch_3")
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar(tmp_path, "cifar10", "train")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing file"):
        load_cifar(tmp_path, "cifar10", "train")
    with pytest.raises(ValueError, match="split"):
        load_cifar(tmp_path, "cifar10", "val")
    with pytest.raises(ValueError, match="name"):
        load_cifar(tmp_path, "cifar11", "train")


def test_cifar_bad_keys(tmp_path):
    d = _write_cifar10(tmp_path)
    (d / "test_batch").write_bytes(pickle.dumps({"pixels": 1}))
    with pytest.raises(DatasetError, match="'data'"):
        load_cifar(tmp_path, "cifar10", "test")


def _idx(path, arr):
    hdr = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(hdr + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx(tmp_path):
    imgs = np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    ds = load_fashion_mnist(tmp_path, "test")
    assert ds.images.shape == (5, 3, 28, 28)
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])  # grey replicated
    assert ds.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(DatasetError, match="train-images"):
        load_fashion_mnist(tmp_path, "train")


def test_fashion_mnist_corrupt(tmp_path):
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x00\x01")  # truncated
    with pytest.raises(DatasetError, match="truncated"):
        load_fashion_mnist(tmp_path, "test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="labels"):
        load_fashion_mnist(tmp_path, "test")


def _folder(root, labeled=True, n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog") if labeled else ("",):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_labeled_and_cache(tmp_path):
    _folder(tmp_path / "imgs")
    ds = load_image_folder(tmp_path / "imgs", image_size=16)
    assert ds.images.shape == (6, 3, 16, 16) and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    caches = list((tmp_path / "imgs" / ".sslext_cache").glob("*.pt"))
    assert len(caches) == 1 and not list((tmp_path / "imgs" / ".sslext_cache").glob("*.tmp"))
    again = load_image_folder(tmp_path / "imgs", image_size=16)
    assert torch.equal(again.images, ds.images)
    caches[0].write_bytes(b"corrupt cache")  # a broken cache is rebuilt, not fatal
    assert torch.equal(load_image_folder(tmp_path / "imgs", image_size=16).images, ds.images)


def test_image_folder_unlabeled_split_and_errors(tmp_path):
    _folder(tmp_path / "u", labeled=False)
    ds = load_image_folder(tmp_path / "u", image_size=12, cache_dir=tmp_path / "cache")
    assert ds.labels is None and len(ds) == 3
    _folder(tmp_path / "inet" / "train")
    assert len(load_image_folder(tmp_path / "inet", 8, split="train", cache_dir=tmp_path / "c2")) == 6
    with pytest.raises(DatasetError, match="not a directory"):
        load_image_folder(tmp_path / "missing", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_image_folder(tmp_path / "empty", 8)
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="a.jpg"):
        load_image_folder(tmp_path / "bad", 8, cache_dir=tmp_path / "c3")
    with pytest.raises(ValueError, match="image_size"):
        load_image_folder(tmp_path / "u", 2)


def test_build_dataset_limit_and_unknown(tmp_path):
    _write_cifar10(tmp_path)
    ds = build_dataset("cifar10", "train", root=str(tmp_path), limit=7)
    assert len(ds) == 7
    with pytest.raises(ValueError, match="data.dataset"):
        build_dataset("mnist", "train")


def test_build_dataset_image_folder_splits(tmp_path):
    _folder(tmp_path / "flat")
    assert (
        len(
            build_dataset(
                "image_folder", "train", root=str(tmp_path / "flat"), image_size=8, cache_dir=str(tmp_path / "c")
            )
        )
        == 6
    )
    with pytest.raises(DatasetError, match="'val' or 'test'"):
        build_dataset("image_folder", "test", root=str(tmp_path / "flat"), image_size=8)
    _folder(tmp_path / "inet" / "train")
    _folder(tmp_path / "inet" / "val", n=2)
    te = build_dataset("image_folder", "test", root=str(tmp_path / "inet"), image_size=8, cache_dir=str(tmp_path / "c"))
    assert len(te) == 4 and te.classes == ["cat", "dog"]
    with pytest.raises(ValueError, match="data.root"):
        build_dataset("image_folder", "train")
