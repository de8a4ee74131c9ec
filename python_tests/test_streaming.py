"""data.source=stream: image folders read lazily by DataLoader workers.

The global batches are a pure function of (seed, epoch, step): the same for 1
and 2 processes and for any number of workers, and a run resumed mid-epoch
sees the batches (and losses) of an uninterrupted one.
"""

import json
import multiprocessing
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from dist_helpers import run_ranks
from stream_helpers import TINY_STREAM, record_batches, stream_rank_worker, write_folder

from sslext.app.config import ConfigError, load_config
from sslext.data import DatasetError
from sslext.data.folder import CropSpec, StreamingImageFolder
from sslext.data.sampler import GlobalBatchSampler, epoch_permutation
from sslext.data.stream import StreamLoader
from sslext.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
SPECS = [CropSpec(16, 0.2, 1.0, 0.5), CropSpec(16, 0.2, 1.0, 0.5)]


def _cfg(root, out, *extra):
    return load_config(None, [*TINY_STREAM, f"data.root={root}", f"train.out_dir={out}", *extra])


def _epoch(loader, epoch, step=0):
    loader.start(epoch, step)
    return [loader.next_batch() for _ in range(len(loader.sampler))]


def test_sampler_slices_are_the_global_batch_for_any_world_size():
    n, gb, seed = 50, 12, 3
    one = GlobalBatchSampler(n, gb, seed)
    for epoch in (0, 1):
        one.set_position(epoch, 0)
        ref = list(one)
        assert [i for b in ref for _, i in b] == epoch_permutation(n, seed, epoch)[: 4 * gb].tolist()
        for world in (2, 3, 4):
            ranks = [GlobalBatchSampler(n, gb, seed, r, world) for r in range(world)]
            for s in ranks:
                s.set_position(epoch, 1)
            got = [sum(parts, []) for parts in zip(*map(list, ranks))]
            assert got == ref[1:]
    with pytest.raises(ValueError, match="world_size"):
        GlobalBatchSampler(n, 10, seed, 0, 3)


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    root = write_folder(tmp_path / "f")
    ds = StreamingImageFolder(root / "train", SPECS, seed=5)
    assert len(ds) == 24 and ds.labels.tolist() == sorted([0, 1, 2] * 8)
    ref = _epoch(StreamLoader(ds, 8, 5, torch.device("cpu"), workers=0), 1)
    got = _epoch(StreamLoader(ds, 8, 5, torch.device("cpu"), workers=2, prefetch=1), 1)
    assert len(ref) == 3
    for (xa, ya), (xb, yb) in zip(ref, got):
        assert xa.dtype == torch.uint8 and xa.shape == (8, 2, 3, 16, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Two views differ, and another epoch crops (and orders) differently.
    assert not torch.equal(ref[0][0][:, 0], ref[0][0][:, 1])
    assert not torch.equal(_epoch(StreamLoader(ds, 8, 5, torch.device("cpu"), workers=0), 0)[0][0], ref[0][0])


def test_resumed_loader_continues_the_epoch(tmp_path):
    ds = StreamingImageFolder(write_folder(tmp_path / "f") / "train", SPECS, seed=1)
    full = _epoch(StreamLoader(ds, 8, 1, torch.device("cpu"), workers=0), 0)
    rest = _epoch(StreamLoader(ds, 8, 1, torch.device("cpu"), workers=0), 0, step=2)
    assert len(rest) == 1 and torch.equal(rest[0][0], full[2][0])


def _losses(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["kind"] == "step"]


def test_trainer_resume_mid_epoch_sees_the_same_batches_and_losses(tmp_path):
    root = write_folder(tmp_path / "f")
    write_folder(tmp_path / "f", per_class=2, seed=1, split="val")
    ref_t = Trainer(_cfg(root, tmp_path / "ref"))
    ref_batches = record_batches(ref_t)
    ref = ref_t.fit()
    assert ref["finished"] and ref["global_step"] == 6
    cut = Trainer(_cfg(root, tmp_path / "cut", "train.max_steps=4"))  # stops at step 1 of epoch 1
    first = record_batches(cut)
    assert cut.fit()["global_step"] == 4
    ckpt = torch.load(tmp_path / "cut" / "run" / "last.pt", weights_only=False)
    assert ckpt["data_position"] == {"epoch": 1, "step": 1, "n": 24, "global_batch": 8, "seed": 0}
    again = Trainer(_cfg(root, tmp_path / "cut"), resume=True)
    rest = record_batches(again)
    assert again.fit()["finished"]
    got = first + rest
    assert len(got) == len(ref_batches) == 6
    for a, b in zip(ref_batches, got):
        assert torch.equal(a["views"], b["views"]) and torch.equal(a["labels"], b["labels"])
    assert _losses(tmp_path / "cut" / "run") == _losses(tmp_path / "ref" / "run")
    # The evaluation bank and the test split are decoded in memory; the probe trained on labels.
    final = [json.loads(line) for line in (tmp_path / "ref" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("knn_acc" in r for r in final if r["kind"] == "epoch")
    # sslext-eval of a streamed run: the same in-memory bank (8 images) and test split (6 images).
    from sslext.app.training.checkpoint_eval import evaluate_checkpoint

    res = evaluate_checkpoint(tmp_path / "ref" / "run" / "last.pt", ["eval.offline_epochs=2"])
    assert 0 <= res["knn_acc"] <= 100 and "linear_acc" in res


def test_resume_refuses_a_changed_folder(tmp_path):
    root = write_folder(tmp_path / "f")
    Trainer(_cfg(root, tmp_path / "o", "train.max_steps=2")).fit()
    write_folder(tmp_path / "f", classes=1, per_class=9, seed=2, split="train")  # c0 gains an image
    with pytest.raises(DatasetError, match=r"data position.*n: 24 saved, 25 now"):
        Trainer(_cfg(root, tmp_path / "o"), resume=True)


def test_same_global_batches_on_one_and_two_processes(tmp_path):
    root = write_folder(tmp_path / "f")
    over = [f"data.root={root}", "train.max_steps=4", "eval.online_probe=false"]
    for world in (1, 2):
        run_ranks(stream_rank_worker, world, tmp_path, str(tmp_path), over, timeout=240)
        res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
        assert all("error" not in r for r in res), res
        glob = [torch.cat([r["batches"][s]["views"] for r in res]) for s in range(4)]
        if world == 1:
            one = glob
    assert all(torch.equal(a, b) for a, b in zip(one, glob))
    assert glob[0].shape == (8, 2, 3, 16, 16) and res[0]["batches"][0]["views"].shape[0] == 4


def test_every_rank_counts_the_files_any_rank_skipped(tmp_path):
    # The broken file falls in one rank's slice of one batch; the other rank never decodes it.
    root = _with_bad(tmp_path)
    over = [f"data.root={root}", "data.on_bad_image=skip", "train.epochs=1", "eval.online_probe=false"]
    for world in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skip warning of the one rank that met the file
            run_ranks(stream_rank_worker, world, tmp_path, str(tmp_path), over, timeout=240)
        res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
        assert all("error" not in r for r in res), res
        assert [r["summary"]["skipped_images"] for r in res] == [1] * world


def _with_bad(tmp_path):
    root = write_folder(tmp_path / "f")
    (root / "train" / "c1" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_bad_file_stops_with_its_name(tmp_path):
    ds = StreamingImageFolder(_with_bad(tmp_path) / "train", SPECS)
    for workers in (0, 1):
        before = set(multiprocessing.active_children())  # children of earlier tests are not this test's
        loader = StreamLoader(ds, 25, 0, torch.device("cpu"), workers=workers)
        with pytest.raises(DatasetError, match=r"zz_broken\.jpg.*cannot decode image.*on_bad_image=skip"):
            _epoch(loader, 0)
        # The error let its workers go at once: the traceback pytest keeps must not hold them.
        assert loader._it is None and set(multiprocessing.active_children()) <= before


def test_trainer_error_stops_the_workers(tmp_path):
    cfg = _cfg(_with_bad(tmp_path), tmp_path / "runs", "data.workers=1")
    tr = Trainer(cfg)
    before = set(multiprocessing.active_children())
    with pytest.raises(DatasetError, match="zz_broken"):
        tr.fit()
    assert tr.stream._it is None and set(multiprocessing.active_children()) <= before


# A process that leaves a loader mid-epoch and exits. Before the exit hooks closed open loaders,
# and while workers ignored SIGTERM, multiprocessing's exit waited for the workers for ever.
_EXIT_SCRIPT = """
import sys, torch
from sslext.data import stream
from sslext.data.folder import CropSpec, StreamingImageFolder
stream.STOP_GRACE_S = 2
ds = StreamingImageFolder(sys.argv[1], [CropSpec(16, 0.2, 1.0, 0.5)] * 2, seed=2)
loader = stream.StreamLoader(ds, 8, 2, torch.device("cpu"), workers=2, prefetch=1)
loader.start(0, 0)
loader.next_batch()
if sys.argv[2] == "unhooked":  # as if the exit hook had not run: multiprocessing's SIGTERM alone
    stream._OPEN.discard(loader)
print("exiting", flush=True)
"""


@pytest.mark.parametrize("how", ["hooked", "unhooked"])
def test_exit_with_a_loader_mid_epoch_does_not_hang(tmp_path, how):
    root = write_folder(tmp_path / "f") / "train"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:  # the timeout only detects a hang; a healthy exit takes seconds (2 s of grace when unhooked)
        proc = subprocess.run(
            [sys.executable, "-c", _EXIT_SCRIPT, str(root), how], env=env, capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process hung at exit ({how}): its DataLoader workers were never stopped")
    assert proc.returncode == 0 and "exiting" in proc.stdout, proc.stderr[-2000:]


def test_bad_file_skipped_is_replaced_and_reported(tmp_path):
    ds = StreamingImageFolder(_with_bad(tmp_path) / "train", SPECS, on_bad_image="skip")
    bad = [i for i in range(len(ds)) if str(ds.files[i]).endswith("zz_broken.jpg")][0]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batches = _epoch(StreamLoader(ds, 25, 0, torch.device("cpu"), workers=1), 0)
    assert len(batches) == 1 and batches[0][0].shape[0] == 25  # still a full batch
    assert ds.skipped == [str(ds.root / ds.files[bad])]
    assert sum("zz_broken.jpg" in str(x.message) and "skipped" in str(x.message) for w_ in [w] for x in w_) == 1
    # Its slot holds the next file's image (a c2 image: the label says so), cropped with the slot's seed.
    order = epoch_permutation(25, 0, 0).tolist()
    assert batches[0][1][order.index(bad)] == ds.labels[(bad + 1) % 25]


def test_config_refuses_what_streaming_cannot_do():
    with pytest.raises(ConfigError, match="data.source.*image_folder"):
        load_config(None, ["data.source=stream", "data.dataset=cifar10"])
    with pytest.raises(ConfigError, match="data.train_limit"):
        load_config(None, ["data.source=stream", "data.dataset=image_folder", "data.train_limit=10"])
    with pytest.raises(ConfigError, match="eval.split"):
        load_config(None, ["data.source=shards", "data.dataset=image_folder", "eval.split=val"])
    with pytest.raises(ConfigError, match="data.classes"):
        load_config(None, ["data.dataset=image_folder", "data.classes=[a, a]"])
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(None, ["data.workers=-1"])


def test_class_selection_labels_in_sorted_order(tmp_path):
    root = write_folder(tmp_path / "f", classes=4, per_class=2)
    ds = StreamingImageFolder(root / "train", SPECS, classes=["c3", "c1"])
    assert ds.classes == ["c1", "c3"] and ds.labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(DatasetError, match=r"data.classes.*'c9'"):
        StreamingImageFolder(root / "train", SPECS, classes=["c1", "c9"])


def test_imagenet100_recipes_select_their_100_classes(tmp_path):
    from PIL import Image

    from sslext.app.config import resolve_config_path

    cfgs = [
        load_config(resolve_config_path(f"configs/{m}_resnet50_imagenet100.yaml"))
        for m in ("vicreg", "barlow_twins", "vicreg_tico")
    ]
    wanted = cfgs[0]["data"]["classes"]
    assert len(set(wanted)) == 100 and all(c["data"]["classes"] == wanted for c in cfgs)
    assert all(c["data"]["source"] == "stream" and c["model"]["backbone"] == "resnet50" for c in cfgs)
    # A folder with the 100 classes and two more: the selection keeps the 100, in sorted order.
    for name in [*wanted, "n00000001", "n99999999"]:
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (10, 12), (1, 2, 3)).save(tmp_path / "train" / name / "a.JPEG")
    ds = StreamingImageFolder(tmp_path / "train", SPECS, classes=wanted)
    assert ds.classes == sorted(wanted) and len(ds) == 100 and ds.labels.tolist() == list(range(100))


def test_class_selection_applies_to_the_in_memory_path_too(tmp_path):
    from sslext.data import build_dataset

    root = write_folder(tmp_path / "f", classes=4, per_class=2)
    write_folder(tmp_path / "f", classes=4, per_class=1, seed=1, split="val")
    train = build_dataset("image_folder", "train", str(root), image_size=16, classes=["c2", "c0"])
    test = build_dataset("image_folder", "test", str(root), image_size=16, classes=["c2", "c0"])
    assert train.classes == test.classes == ["c0", "c2"]
    assert train.labels.tolist() == [0, 0, 1, 1] and test.labels.tolist() == [0, 1]


def test_workers_outlive_a_stop_signal_sent_to_the_process_group(tmp_path):
    # A scheduler's SIGTERM (or Ctrl-C's SIGINT) reaches the workers too; the trainer needs them
    # until its step ends and it checkpoints (SIGTERM: for STOP_GRACE_S). Sent here to the workers alone.
    import signal

    ds = StreamingImageFolder(write_folder(tmp_path / "f") / "train", SPECS, seed=2)
    ref = _epoch(StreamLoader(ds, 8, 2, torch.device("cpu"), workers=0), 0)
    loader = StreamLoader(ds, 8, 2, torch.device("cpu"), workers=2, prefetch=1)
    loader.start(0, 0)
    got = [loader.next_batch()]
    for w in loader._it._workers:
        os.kill(w.pid, signal.SIGTERM)
        os.kill(w.pid, signal.SIGINT)
    got += [loader.next_batch() for _ in range(2)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ref, got))
    loader.close()
