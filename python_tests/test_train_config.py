import re
from pathlib import Path

import pytest
import torch

from sslext.app.config import ConfigError, load_config
from sslext.app.methods import METHODS, build_method
from sslext.models import build_backbone
from sslext.optim import LARS, WarmupCosine, build_optimizer, param_groups

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg["method"]["name"] in METHODS


ALL_CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_config_comments_match_what_the_keys_do(path):
    # amp and channels_last apply on every device: `amp: true` (bf16 everywhere, CPU
    # included) under a "GPU only" comment once made CPU runs slower than intended.
    for n, line in enumerate(path.read_text().splitlines(), 1):
        key, _, comment = line.partition("#")
        if re.match(r"\s*(train\.)?(amp|channels_last):", key):
            assert "gpu only" not in comment.lower(), f"{path.name}:{n}: {line.strip()}"
            assert not re.match(r"\s*(train\.)?amp:\s*true\b", key), f"{path.name}:{n}: say bf16 or auto"


def test_config_matrix_complete():
    names = {p.stem for p in CONFIGS}
    for m in ("vicreg", "barlow_twins", "tico", "vicreg_tico"):
        for arch in ("resnet18", "resnet50"):
            assert f"{m}_{arch}_cifar10" in names
    assert "demo_fashion_mnist" in names


@pytest.mark.parametrize(
    "override,key",
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.name=rmsprop", "optim.name"),
        ("bogus=1", "bogus"),
        ("method.lambd=0.1", "method.lambd"),
        ("augment.view1.solarize_prob=1.5", "augment.view1.solarize_prob"),
        ("train.amp=maybe", "train.amp"),
        ("method.name=no_such_method", "method.name"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("data.dataset=mnist", "data.dataset"),
        ("method.projector=[0,4]", "method.projector"),
        ("optim.warmup_epochs=5000", "optim.warmup_epochs"),
        ("optim.batch_size=2.5", "optim.batch_size"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite"),
        ("train.checkpoint_every_steps=0", "train.checkpoint_every_steps"),
        ("train.checkpoint_every_steps=1.5", "train.checkpoint_every_steps"),
        ("train.max_consecutive_skips=0", "train.max_consecutive_skips"),
        ("train.checkpoint_every=0", "train.checkpoint_every"),
    ],
)
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_override_switches_method_and_types():
    cfg = load_config(None, ["method.name=barlow_twins", "method.lambd=0.01", "optim.lr=1"])
    assert cfg["method"]["lambd"] == 0.01 and cfg["method"]["loss_scale"] == 0.1
    assert isinstance(cfg["optim"]["lr"], float)


def test_lars_excludes_bias_and_norm():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    groups = param_groups(m, 1e-4)
    assert [len(g["params"]) for g in groups] == [2, 4]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lars_adapt"] is False
    opt = build_optimizer("lars", m, lr=0.1, weight_decay=1e-4)
    assert isinstance(opt, LARS)
    m(torch.randn(16, 4)).pow(2).mean().backward()
    bias_before = m[0].bias.detach().clone()
    grad = m[0].bias.grad.clone()
    opt.step()
    # excluded params take a plain SGD step (first momentum step = gradient)
    assert torch.allclose(m[0].bias, bias_before - 0.1 * grad)


def test_warmup_cosine_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    s = WarmupCosine(opt, warmup_steps=10, total_steps=110)
    assert opt.param_groups[0]["lr"] == 0.0
    for _ in range(10):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    for _ in range(100):
        s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_backbones_cifar_stem():
    for name in ("resnet18", "resnet50"):
        b = build_backbone(name)
        assert b.conv1.kernel_size == (3, 3) and b.conv1.stride == (1, 1)
        assert isinstance(b.maxpool, torch.nn.Identity)
    b = build_backbone("resnet18")
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, b.out_dim) == (2, 512)
    with pytest.raises(ValueError, match="model.backbone"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="model.width"):
        build_backbone("resnet18", width=32)


def test_build_method_rejects_unknown_kwargs():
    with pytest.raises(ValueError, match="method.foo"):
        build_method("vicreg", build_backbone("resnet10", width=8), foo=1)
    with pytest.raises(ValueError, match="method.name"):
        build_method("nope", build_backbone("resnet10", width=8))
