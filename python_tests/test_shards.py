"""data.source=shards and sslext-shard: WebDataset-style tar shards with a checksummed manifest."""

import json

import pytest
import torch
from stream_helpers import TINY_STREAM, record_batches, write_folder

from sslext.app.config import load_config
from sslext.app.shard import main as shard_main
from sslext.data import DatasetError
from sslext.data.folder import CropSpec, StreamingImageFolder
from sslext.data.shards import MANIFEST, ShardDataset, write_shards
from sslext.data.stream import StreamLoader
from sslext.train import Trainer

SPECS = [CropSpec(16, 0.2, 1.0, 0.5), CropSpec(16, 0.2, 1.0, 0.5)]


def _epoch(ds, workers=0, step=0):
    loader = StreamLoader(ds, 8, 4, torch.device("cpu"), workers=workers)
    loader.start(0, step)
    return [loader.next_batch() for _ in range(len(loader.sampler))]


def test_shards_hold_the_folder_and_give_its_batches(tmp_path):
    root = write_folder(tmp_path / "f")
    m = write_shards(root / "train", tmp_path / "s", shard_size=10)
    assert [s["count"] for s in m["shards"]] == [10, 10, 4] and m["count"] == 24
    assert m["classes"] == ["c0", "c1", "c2"] and m["labelled"]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [MANIFEST] + [f"shard-00000{k}.tar" for k in range(3)]
    saved = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert all(len(s["sha256"]) == 64 for s in saved["shards"])
    shards = ShardDataset(tmp_path / "s", SPECS, seed=4)
    folder = StreamingImageFolder(root / "train", SPECS, seed=4)
    assert torch.equal(shards.labels, folder.labels)
    a, b = _epoch(shards, workers=2), _epoch(folder)
    # The same bytes in the same order: the same crops, pixel for pixel.
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert torch.equal(_epoch(shards, step=2)[0][0], a[2][0])


def test_webdataset_reads_the_shards(tmp_path):
    wds = pytest.importorskip("webdataset")  # an optional extra; `make test` installs it
    write_shards(write_folder(tmp_path / "f") / "train", tmp_path / "s", shard_size=10)
    urls = [str(tmp_path / "s" / f"shard-00000{k}.tar") for k in range(3)]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("__key__", "cls"))
    assert [k for k, _ in samples] == [f"{i:09d}" for i in range(24)]
    assert [int(c) for _, c in samples] == sorted([0, 1, 2] * 8)


def test_reading_verifies_sizes_and_checksums(tmp_path):
    write_shards(write_folder(tmp_path / "f") / "train", tmp_path / "s", shard_size=10)
    shard = tmp_path / "s" / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"shard-000001\.tar does not match its sha256"):
        ShardDataset(tmp_path / "s", SPECS)
    shard.write_bytes(bytes(data[:-512]))
    with pytest.raises(DatasetError, match=r"shard-000001\.tar is \d+ bytes, the manifest says"):
        ShardDataset(tmp_path / "s", SPECS)
    ShardDataset(tmp_path / "s", SPECS, verify=False)  # data.verify_shards=false: trusted storage
    assert shard_main(["--verify", str(tmp_path / "s")]) == 2


def test_writing_is_atomic_and_refuses_bad_input(tmp_path, capsys):
    root = write_folder(tmp_path / "f")
    (root / "train" / "c1" / "zz_bad.png").write_text("not an image")
    with pytest.raises(DatasetError, match=r"zz_bad\.png: cannot decode image.*--skip-bad"):
        write_shards(root / "train", tmp_path / "s", shard_size=10)
    # Nothing half-written looks like a shard folder: no manifest, no temporary files.
    assert not (tmp_path / "s" / MANIFEST).exists() and not list((tmp_path / "s").glob(".*tmp"))
    m = write_shards(root / "train", tmp_path / "s", shard_size=10, skip_bad=True)
    assert m["count"] == 24 and m["skipped"] == ["c1/zz_bad.png"]
    with pytest.raises(FileExistsError, match="OUT"):
        write_shards(root / "train", tmp_path / "s")
    with pytest.raises(ValueError, match="--shard-size"):
        write_shards(root / "train", tmp_path / "t", shard_size=0)


def test_cli_shards_splits_and_the_trainer_reads_them(tmp_path, capsys):
    root = write_folder(tmp_path / "f")
    write_folder(tmp_path / "f", per_class=2, seed=1, split="val")
    assert shard_main([str(root), str(tmp_path / "s"), "--shard-size", "7"]) == 0
    out = capsys.readouterr().out
    assert "train: 24 samples in 4 shards, 3 classes" in out and "val: 6 samples in 1 shards" in out
    assert shard_main(["--verify", str(tmp_path / "s")]) == 0
    base = [f"data.root={tmp_path / 's'}", "data.source=shards", "train.max_steps=4"]
    cfg = load_config(None, [*TINY_STREAM, *base, f"train.out_dir={tmp_path / 'o'}"])
    t = Trainer(cfg)
    assert len(t.test_ds) == 6 and t.test_ds.images.shape[1:] == (3, 32, 32)
    seen = record_batches(t)
    assert t.fit()["global_step"] == 4
    resumed = Trainer(load_config(None, [*TINY_STREAM, *base[:2], f"train.out_dir={tmp_path / 'o'}"]), resume=True)
    rest = record_batches(resumed)
    assert resumed.fit()["finished"]
    ref = Trainer(load_config(None, [*TINY_STREAM, *base[:2], f"train.out_dir={tmp_path / 'r'}"]))
    full = record_batches(ref)
    ref.fit()
    assert len(seen + rest) == len(full) == 6
    assert all(torch.equal(a["views"], b["views"]) for a, b in zip(seen + rest, full))
