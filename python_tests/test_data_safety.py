"""Dataset files cannot run code: CIFAR pickles go through a restricted unpickler."""

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sslext.data import DatasetError, load_cifar
from sslext.data.safe_pickle import UnsafePickleError, load_restricted

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this calls ``os.system(cmd)``."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _batch(n, rng, labels_as="list"):
    labels = rng.integers(0, 10, n)
    return {
        "batch_label": "b",
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "labels": labels.tolist() if labels_as == "list" else list(labels),
        "filenames": [f"{i}.png" for i in range(n)],
    }


def _write_cifar10(root, n=8, protocol=4, labels_as="list"):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps(_batch(n, rng, labels_as), protocol=protocol))
    (d / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": n}, protocol=protocol)
    )
    return d


def _crafted(marker: Path) -> bytes:
    return pickle.dumps({"data": _Payload(f"touch {marker}"), "labels": [0]}, protocol=2)


@pytest.mark.parametrize("victim", ["data_batch_1", "test_batch", "batches.meta"])
def test_crafted_batch_never_runs(tmp_path, victim):
    d = _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    (d / victim).write_bytes(_crafted(marker))
    split = "test" if victim == "test_batch" else "train"
    with pytest.raises(DatasetError) as ei:
        load_cifar(tmp_path, "cifar10", split)
    msg = str(ei.value)
    assert str(d / victim) in msg
    assert re.search(r"'(posix|nt|os)\.system'", msg), msg
    assert not marker.exists()


def test_crafted_batch_through_the_cli(tmp_path):
    d = _write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    (d / "data_batch_1").write_bytes(_crafted(marker))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "sslext.train",
            "--set",
            "data.dataset=cifar10",
            "--set",
            f"data.root={tmp_path / 'data'}",
            "--set",
            f"train.out_dir={tmp_path / 'runs'}",
            "--set",
            "train.epochs=1",
            "--set",
            "optim.warmup_epochs=0",
            "--set",
            "train.device=cpu",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert p.returncode == 1, p.stderr[-2000:]
    assert "data_batch_1" in p.stderr and "system" in p.stderr and "refused" in p.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "global_",
    [
        "builtins eval",
        "subprocess Popen",
        "numpy load",
        "numpy.core.multiarray empty",
        "torch load",
        "sslext.data.safe_pickle load_restricted",
    ],
)
def test_every_other_global_is_refused(tmp_path, global_):
    module, name = global_.split()
    # Protocol-0 GLOBAL opcode then STOP: only find_class ever sees it.
    path = tmp_path / "x"
    path.write_bytes(f"c{module}\n{name}\n.".encode())
    with pytest.raises(UnsafePickleError, match=re.escape(f"'{module}.{name}'")) as ei:
        load_restricted(path)
    assert str(path) in str(ei.value)


def test_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"Pabc\n.")
    with pytest.raises(UnsafePickleError, match="persistent"):
        load_restricted(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("labels_as", ["list", "numpy_scalars"])
def test_valid_cifar_files_still_load(tmp_path, protocol, labels_as):
    d = _write_cifar10(tmp_path, protocol=protocol, labels_as=labels_as)
    ds = load_cifar(tmp_path, "cifar10", "train")
    assert ds.images.shape == (40, 3, 32, 32) and ds.classes[9] == "c9"
    raw = pickle.loads((d / "data_batch_2").read_bytes())
    assert torch.equal(ds.images[8], torch.from_numpy(raw["data"][0].reshape(3, 32, 32)))
    assert ds.labels[8:16].tolist() == [int(v) for v in raw["labels"]]


def test_python2_style_module_names_load(tmp_path):
    # The official batches were written by Python 2 numpy: 'numpy.core.multiarray', not numpy 2's 'numpy._core'.
    arr = np.arange(3072 * 2, dtype=np.int64).reshape(2, 3072) % 256
    raw = pickle.dumps({"data": arr.astype(np.uint8), "labels": [1, 2]}, protocol=2)
    old = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != raw
    (tmp_path / "b").write_bytes(old)
    obj = load_restricted(tmp_path / "b")
    assert np.array_equal(obj["data"], arr.astype(np.uint8)) and obj["labels"] == [1, 2]


def test_no_unrestricted_pickle_load_in_the_package():
    """Every file sslext reads goes through load_restricted, torch.load(weights_only=True), yaml.safe_load or json."""
    bad = []
    for p in sorted((REPO / "sslext").rglob("*.py")):
        if p.name == "safe_pickle.py":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(
                r"\bpickle\.(load|loads|Unpickler)\b|\bnp\.load\(|\bnumpy\.load\(|\byaml\.(load|unsafe_load|"
                r"full_load)\(|\bmarshal\.|\bshelve\.|\bdill\.",
                code,
            ):
                bad.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                bad.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
    assert not bad, "unrestricted loaders:\n" + "\n".join(bad)
