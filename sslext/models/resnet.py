"""ResNet backbones from torchvision with the CIFAR stem.

For 32x32 inputs the ImageNet stem (7x7 stride-2 conv + max-pool) throws away
3/4 of the resolution before the first block, so SSL work on CIFAR (SimCLR
appendix B.9, solo-learn, VICReg's CIFAR runs) replaces it with a 3x3 stride-1
conv and drops the max-pool. ``cifar_stem=False`` keeps the ImageNet stem for
larger images (e.g. Imagenette at 128-224 px).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

from .timm_backbone import build_timm_backbone, is_timm_backbone

__all__ = ["BACKBONES", "build_backbone"]


def _small_resnet(**kw) -> ResNet:
    # ResNet-10-style (one BasicBlock per stage) for CPU demos; the channel
    # widths are reduced afterwards in build_backbone via ``width``.
    return ResNet(BasicBlock, [1, 1, 1, 1], **kw)


BACKBONES: Dict[str, Callable[..., ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet10": _small_resnet,
}


class _Bf16SafeConv2d(nn.Conv2d):
    """A strided conv that leaves CPU bf16 autocast when its input is 1 x 1.

    torch's CPU bfloat16 convolution backward returns garbage for a 3x3,
    stride-2, padding-1 conv on a 1 x 1 input: weight gradients of up to 1e37,
    inf or NaN in the taps that only see padding, whose true gradient is 0
    (measured with torch 2.14.1 in 20 of 20 random trials; float32, and every
    input of 2 px or more, are right). Small inputs reach that shape in the
    last stage (4 px jigsaw tiles, 8 px CPC patches), so there the conv runs
    in float32; everywhere else it stays in bf16.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (1, 1) and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _guard_strided_convs(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if type(m) is nn.Conv2d and m.stride != (1, 1) and m.kernel_size != (1, 1):
            m.__class__ = _Bf16SafeConv2d  # same parameters and state_dict keys, another forward
    return net


class _NarrowResNet(nn.Module):
    """torchvision BasicBlock ResNet with configurable stage widths (CPU demos)."""

    def __init__(self, layers, width: int) -> None:
        super().__init__()
        self.inplanes = width
        norm = nn.BatchNorm2d
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        stages = []
        for i, n in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or self.inplanes != planes:
                down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), norm(planes))
            blocks = [BasicBlock(self.inplanes, planes, stride, down)]
            self.inplanes = planes
            blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.out_dim = self.inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def build_backbone(name: str, cifar_stem: bool = True, width: int = 64, image_size: Optional[int] = None) -> nn.Module:
    """Return a backbone mapping images to pooled features; ``.out_dim`` is their size.

    Args:
        name: one of ``BACKBONES`` (``resnet18``, ``resnet34``, ``resnet50``,
            ``resnet10``), or ``timm/<model name>`` (any timm model, built
            untrained; needs ``pip install 'sslext[timm]'``, see
            :mod:`sslext.models.timm_backbone`).
        cifar_stem: 3x3 stride-1 first conv and no max-pool (for <= 64 px);
            timm models keep their own stem.
        width: base width; only ``resnet10`` supports values other than 64.
        image_size: the crop size the backbone sees; only timm models that
            take an input size (ViTs) use it.
    """
    if not isinstance(width, int) or isinstance(width, bool) or width < 4:
        raise ValueError(f"model.width: expected an int >= 4, got {width!r}")
    if is_timm_backbone(name):
        if width != 64:
            raise ValueError(
                f"model.width: timm backbones have their own widths; expected 64 (the default), got {width}"
            )
        return _guard_strided_convs(build_timm_backbone(name, image_size))
    if name not in BACKBONES:
        raise ValueError(f"model.backbone: expected one of {sorted(BACKBONES)} or 'timm/<model name>', got {name!r}")
    if width != 64 and name != "resnet10":
        raise ValueError(f"model.width: only 'resnet10' supports a width other than 64, got {width} for {name}")
    if name == "resnet10":
        if not cifar_stem:
            raise ValueError("model.cifar_stem: 'resnet10' is a small-image backbone and requires cifar_stem=true")
        return _guard_strided_convs(_NarrowResNet([1, 1, 1, 1], width))
    net = BACKBONES[name](weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return _guard_strided_convs(net)
