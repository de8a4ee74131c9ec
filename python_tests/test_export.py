"""sslext-export and sslext.models.load_backbone: a run's backbone on its own.

The torchvision format is checked against torchvision itself: the model built
as the docs say (CIFAR stem, fc = nn.Identity()) loads the file with
strict=True and computes the backbone's features, for ResNet-18 and ResNet-50,
at initialisation and after two training steps.
"""

import copy
import re

import pytest
import torch
import torch.nn as nn
import torchvision

from sslext.app.config import load_config
from sslext.app.export import export_backbone, main
from sslext.models import BACKBONE_FORMAT, load_backbone
from sslext.train import Trainer, load_checkpoint_file

TINY = [
    "data.dataset=synthetic",
    "data.train_limit=64",
    "optim.batch_size=16",
    "optim.warmup_epochs=1",
    "train.epochs=1",
    "train.device=cpu",
    "train.threads=2",
    "train.progress=false",
    "eval.final=false",
    "method.projector=[32,32]",
    "augment.view1.crop_size=16",
    "augment.view2.crop_size=16",
    "name=run",
]


def close_up_to_layout(got, want):
    """The trainer keeps the weights channels_last, torchvision's copy is contiguous:
    the convolutions sum in another order. Measured: at most 4e-7 of the largest
    feature (ResNet-18, two steps); allowed: 1e-5 of it."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def contiguous(net):
    return copy.deepcopy(net).to(memory_format=torch.contiguous_format).eval()


def make_run(tmp_path, backbone, steps, *extra):
    """A run directory whose last.pt holds ``backbone`` after ``steps`` optimizer steps (0: as initialised)."""
    cfg = load_config(None, [f"train.out_dir={tmp_path}", f"model.backbone={backbone}", *TINY, *extra])
    trainer = Trainer(cfg)
    if steps:
        trainer.cfg["train"]["max_steps"] = steps
        trainer.fit()
    else:
        trainer.save()
    return tmp_path / "run", trainer


@pytest.mark.parametrize(
    "name, ctor", [("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50)]
)
@pytest.mark.parametrize("steps", [0, 2])
def test_torchvision_format_loads_strict_and_gives_the_same_features(tmp_path, name, ctor, steps):
    torch.manual_seed(0)
    run, trainer = make_run(tmp_path, name, steps)
    ckpt = load_checkpoint_file(run / "last.pt")
    assert ckpt["global_step"] == steps
    out = tmp_path / "backbone.pt"
    info = export_backbone(run, out)  # torchvision is the default format
    assert info["format"] == "torchvision" and info["backbone"] == name and info["cifar_stem"]

    sd = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values()) and not any(k.startswith("fc.") for k in sd)
    # The docs' one line: the CIFAR stem, and the classifier replaced by an identity.
    m = ctor()
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    m.load_state_dict(sd, strict=True)

    ours = trainer.method.backbone.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want, got, same_layout = ours(x), m.eval()(x), contiguous(ours)(x)
    assert got.shape == (4, ours.out_dim) == (4, info["out_dim"])
    assert torch.equal(got, same_layout)  # the same ops on the same layout: bit for bit
    close_up_to_layout(got, want)
    for k, v in sd.items():  # the checkpoint's weights, trained ones after steps > 0
        assert torch.equal(v, ckpt["method"]["backbone." + k]), k
    # The same file through load_backbone (recognised as a torchvision ResNet).
    again = load_backbone(out).eval()
    with torch.no_grad():
        assert torch.equal(again(x), same_layout)


def test_sslext_format_round_trip_and_metadata(tmp_path):
    torch.manual_seed(0)
    run, trainer = make_run(tmp_path, "resnet10", 2, "model.width=8")
    out = tmp_path / "sub" / "bb.pt"  # a missing parent folder is made
    info = export_backbone(run / "last.pt", out, "sslext")
    rec = torch.load(out, weights_only=True)
    assert rec["format"] == BACKBONE_FORMAT and rec["backbone"] == "resnet10" and rec["width"] == 8
    assert rec["out_dim"] == info["out_dim"] == 64
    assert rec["source"]["method"] == "vicreg" and rec["source"]["global_step"] == 2
    net = load_backbone(out)
    assert net.training  # as a freshly built module
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), contiguous(trainer.method.backbone)(x))
    # torchvision has no width-8 ResNet: the error says what to use instead.
    with pytest.raises(ValueError, match="--format: .*width 8.*--format sslext"):
        export_backbone(run, tmp_path / "tv.pt", "torchvision")
    assert not (tmp_path / "tv.pt").exists()


def test_command_line_prints_a_loading_line_that_works(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    run, trainer = make_run(tmp_path, "resnet18", 0)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--out", "bb.pt"]) == 0
    line = re.search(r"load it with: (.*)", capsys.readouterr().out).group(1)
    scope = {}
    exec(line, scope)  # import ...; m = torchvision.models.resnet18(); ...; m.load_state_dict(...)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(scope["m"].eval()(x), contiguous(trainer.method.backbone)(x))


def test_bad_inputs_name_the_argument(tmp_path, capsys):
    run, _ = make_run(tmp_path, "resnet10", 0, "model.width=8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = [
        (["missing", "--out", str(tmp_path / "a.pt")], "RUN_OR_CHECKPOINT: no such"),
        ([str(tmp_path / "empty"), "--out", str(tmp_path / "a.pt")], "RUN_OR_CHECKPOINT: .*holds no last.pt"),
        ([str(tmp_path / "junk.pt"), "--out", str(tmp_path / "a.pt")], "RUN_OR_CHECKPOINT: .*cannot be loaded"),
        ([str(run), "--out", str(tmp_path)], "--out: .*is a directory"),
        ([str(run / "last.pt"), "--out", str(run / "last.pt"), "--format", "sslext"], "--out: .*checkpoint being"),
    ]
    for argv, msg in cases:
        assert main(argv) == 1
        assert re.search("sslext-export: error: " + msg, capsys.readouterr().err), argv
    assert load_checkpoint_file(run / "last.pt")["global_step"] == 0  # untouched
    with pytest.raises(SystemExit) as e:
        main([str(run), "--out", "x.pt", "--format", "onnx"])
    assert e.value.code == 2 and "--format" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--format"):
        export_backbone(run, tmp_path / "x.pt", "onnx")


def test_load_backbone_refuses_what_it_cannot_rebuild(tmp_path):
    torch.save({"a": 1}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="path: .*neither an sslext backbone nor a ResNet state dict"):
        load_backbone(tmp_path / "dict.pt")
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        load_backbone(tmp_path / "missing.pt")
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "vgg.pt")
    with pytest.raises(ValueError, match="path: .*conv1.weight"):
        load_backbone(tmp_path / "vgg.pt")
    # torchvision's own (ImageNet-stem) ResNet weights load, their classifier dropped.
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), tmp_path / "tv18.pt")
    net = load_backbone(tmp_path / "tv18.pt").eval()
    tv.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv.eval()(x))
    assert net.conv1.kernel_size == (7, 7)
