"""model.backbone: timm/<name>: a small timm ResNet and a tiny ViT train on CPU-sized crops and export."""

import copy
import json
import math
import sys

import pytest
import torch

from sslext.app.config import load_config
from sslext.app.export import export_backbone
from sslext.models import build_backbone, load_backbone
from sslext.train import Trainer

pytest.importorskip("timm")

RESNET, VIT = "timm/resnet10t", "timm/vit_tiny_patch16_224"
# 16 training images in batches of 8: two steps make an epoch, then its evaluation (kNN, probe, RankMe).
TINY = [
    "data.dataset=synthetic",
    "data.train_limit=16",
    "optim.batch_size=8",
    "optim.warmup_epochs=1",
    "train.epochs=1",
    "train.device=cpu",
    "train.threads=2",
    "train.progress=false",
    "train.log_every=1",
    "eval.final=false",
    "eval.knn_k=5",
    "eval.diag_samples=16",
    "augment.view1.crop_size=16",
    "augment.view2.crop_size=16",
    "name=run",
    "method.projector=[32,32]",
]


def test_feature_size_and_small_image_arguments():
    vit = build_backbone(VIT, image_size=16)
    assert vit.timm_kwargs == {"img_size": 16, "patch_size": 4}  # 4 x 4 tokens, not 1 x 1 of 16 px patches
    assert vit.out_dim == vit.num_features == 192
    assert build_backbone(VIT, image_size=48).timm_kwargs == {"img_size": 48, "patch_size": 8}
    assert build_backbone(VIT, image_size=128).timm_kwargs == {"img_size": 128}
    res = build_backbone(RESNET, image_size=16)
    assert res.timm_kwargs == {}  # timm's ResNet takes no input size: built as is
    assert res.out_dim == 512
    with torch.no_grad():
        assert vit.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 192)
        for size in (16, 32):
            assert res.eval()(torch.randn(2, 3, size, size)).shape == (2, 512)
    # No classifier: num_classes=0 leaves the pooled features.
    assert isinstance(res.get_classifier(), torch.nn.Identity) and isinstance(vit.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize("backbone", [RESNET, VIT])
@pytest.mark.parametrize("method", ["vicreg", "barlow_twins"])
def test_trains_and_exports(tmp_path, backbone, method):
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            f"train.out_dir={tmp_path}",
            f"model.backbone={backbone}",
            f"method.name={method}",
            "method.projector=[32,32]",
            *TINY,
        ],
    )
    trainer = Trainer(cfg)
    before = copy.deepcopy(trainer.method.backbone.state_dict())
    summary = trainer.fit()
    assert summary["finished"] and summary["global_step"] == 2
    recs = [json.loads(line) for line in trainer.metrics.path.read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["kind"] == "step"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    (epoch,) = [r for r in recs if r["kind"] == "epoch"]
    assert 0 <= epoch["knn_acc"] <= 100 and epoch["backbone_rankme"] > 1
    after = trainer.method.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the backbone learned

    out = tmp_path / "bb.pt"
    info = export_backbone(tmp_path / "run", out, "sslext")
    assert info["backbone"] == backbone and info["out_dim"] == trainer.method.backbone.out_dim
    net = load_backbone(out).eval()
    same_layout = copy.deepcopy(trainer.method.backbone).to(memory_format=torch.contiguous_format).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), same_layout(x))
    with pytest.raises(ValueError, match="--format: torchvision has no .*--format sslext"):
        export_backbone(tmp_path / "run", tmp_path / "tv.pt", "torchvision")


def test_bad_names_and_missing_timm(monkeypatch):
    with pytest.raises(ValueError, match="model.backbone: timm has no model 'resnet10x'.*resnet10t"):
        build_backbone("timm/resnet10x")
    with pytest.raises(ValueError, match="model.width"):
        build_backbone(RESNET, width=32)
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r"model.backbone: .*pip install 'sslext\[timm\]'"):
        build_backbone(RESNET)
