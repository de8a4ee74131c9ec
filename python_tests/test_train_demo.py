import yaml

from sslext import demo
from sslext.config import load_config


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
