from pathlib import Path

import pytest

from sslext.app import demo
from sslext.app.config import load_config


def test_demo_config_is_cpu_sized():
    cfg = load_config(demo.DEMO_CONFIG)
    assert cfg["data"]["dataset"] == "fashion_mnist" and cfg["train"]["device"] == "cpu"
    assert cfg["model"]["backbone"] == "resnet10"


def test_demo_missing_dataset_explains_install(tmp_path, capsys):
    rc = demo.main(["--set", f"data.root={tmp_path}", "--set", f"train.out_dir={tmp_path}"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "apt-get install -y dataset-fashion-mnist" in err


def test_demo_bad_override(capsys):
    assert demo.main(["--set", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def _fashion_mnist(root, n_train=64, n_test=32):
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)

    def idx(path, arr):
        arr = np.asarray(arr, dtype=np.uint8)
        header = struct.pack(">HBB", 0, 8, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.tobytes())

    for split, n in (("train", n_train), ("t10k", n_test)):
        idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_demo_compares_float32_with_bf16_channels_last(tmp_path, capsys):
    _fashion_mnist(tmp_path)
    rc = demo.main(
        [
            "--compare-precision",
            "--set",
            f"data.root={tmp_path}",
            "--set",
            f"train.out_dir={tmp_path}",
            "--set",
            "data.train_limit=null",
            "--set",
            "train.epochs=1",
            "--set",
            "optim.batch_size=32",
            "--set",
            "optim.warmup_epochs=0",
            "--set",
            "eval.offline_epochs=2",
            "--set",
            "eval.knn_k=5",
            "--set",
            "method.projector=[32,32]",
            "--set",
            "train.progress=false",
            "--set",
            "train.threads=2",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "float32 + channels_last" in out and "bf16 + channels_last" in out and "training images/s" in out
    import json

    res = json.loads((tmp_path / "demo_fashion_mnist_fp32" / "demo_result.json").read_text())
    runs = res["runs"]
    assert set(runs) == {"float32 + channels_last", "bf16 + channels_last"}
    fp32, bf16 = runs["float32 + channels_last"], runs["bf16 + channels_last"]
    assert fp32["amp"] is False and fp32["precision"] == "float32" and bf16["precision"] == "bf16"
    assert fp32["run_dir"] != bf16["run_dir"]
    # Like with like: the two runs differ in train.amp only, both in channels_last.
    for r in (fp32, bf16):
        assert 0 <= r["ssl"]["linear_acc"] <= 100
        assert load_config(Path(r["run_dir"]) / "config.yaml")["train"]["channels_last"] is True
    # The conclusion is about the default, train.amp: auto, resolved on this machine.
    d = res["default_precision"]
    assert d["amp"] == "auto" and d["precision"] in ("float32", "bf16")
    assert set(d["rates"]) == {"float32", "bf16"} and d["reason"].startswith("auto on ")
    assert "train.amp=auto (the default)" in out and f"trains in {d['precision']}" in out


def test_demo_stops_on_signal(tmp_path, capsys, monkeypatch):
    # Ctrl-C during the float32 run must end the demo: no bf16 run, no table.
    _fashion_mnist(tmp_path)
    monkeypatch.setenv("SSLEXT_TEST_FAULT", "int:step:1")
    rc = demo.main(
        [
            "--compare-precision",
            "--set",
            f"data.root={tmp_path}",
            "--set",
            f"train.out_dir={tmp_path}",
            "--set",
            "data.train_limit=null",
            "--set",
            "train.epochs=2",
            "--set",
            "optim.batch_size=32",
            "--set",
            "optim.warmup_epochs=0",
            "--set",
            "method.projector=[32,32]",
            "--set",
            "train.progress=false",
            "--set",
            "train.threads=2",
        ]
    )
    assert rc == demo.EXIT_INTERRUPTED
    out, err = capsys.readouterr()
    assert "stopped by SIGINT" in err and "float32 + channels_last run" in err and "linear probe" not in out
    assert (tmp_path / "demo_fashion_mnist_fp32" / "last.pt").exists()
    assert not (tmp_path / "demo_fashion_mnist_bf16").exists()


def _no_debian(monkeypatch, tmp_path):
    import sslext.data.datasets as D

    monkeypatch.setattr(D, "FASHION_MNIST_DIRS", (str(tmp_path / "no-debian"),))


def test_demo_downloads_fashion_mnist_without_root(tmp_path, monkeypatch):
    # No Debian package: the demo fetches the files with torchvision's downloader
    # into --data-dir (faked here: the tests never touch the network) and reads them.
    import torchvision.datasets

    _no_debian(monkeypatch, tmp_path)
    calls = []

    class FakeFashionMNIST:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            _fashion_mnist(raw)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    data_dir = str(tmp_path / "data")
    assert demo.find_fashion_mnist(None, data_dir) == data_dir
    assert calls == [(data_dir, True, True), (data_dir, False, True)]
    # Found there next time: no second download.
    assert demo.find_fashion_mnist(None, data_dir) == data_dir and len(calls) == 2


def test_demo_without_data_or_network_names_every_way(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    _no_debian(monkeypatch, tmp_path)

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    rc = demo.main(["--data-dir", str(tmp_path / "data"), "--set", f"train.out_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 1 and "Name or service not known" in err
    assert "apt-get install -y dataset-fashion-mnist" in err and "data.root=DIR" in err
    assert demo.main(["--no-download", "--data-dir", str(tmp_path / "data")]) == 1
    assert "--no-download was given" in capsys.readouterr().err


def test_shipped_configs_resolve_by_name():
    from sslext.app.config import ConfigError, load_config, resolve_config_path

    assert resolve_config_path("vicreg_resnet18_cifar10").name == "vicreg_resnet18_cifar10.yaml"
    assert resolve_config_path("sweeps/seed_question_cpu").name == "seed_question_cpu.yaml"
    assert load_config("smoke_synthetic")["name"] == "smoke_synthetic"
    with pytest.raises(ConfigError, match="--config: 'nope' is neither a file nor a shipped config"):
        resolve_config_path("nope")
