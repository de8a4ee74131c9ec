"""Our backbones under CPU bf16 autocast: the strided-conv guard.

torch's CPU bf16 convolution backward is wrong for a 3x3 / stride 2 / padding
1 conv on a 1 x 1 input (garbage in the taps that only see padding); small
inputs (jigsaw tiles, CPC patches) reach that shape in the last stage. The
backbones run exactly those calls in float32 (sslext.models.resnet).
"""

import pytest
import torch

from sslext.models import build_backbone


def _conv_grads(net, x, autocast):
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        h = net(x)
    h.float().square().mean().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.dim() == 4}


@pytest.mark.parametrize("name,width", [("resnet10", 8), ("resnet18", 64)])
def test_tiny_inputs_give_bf16_level_gradients(name, width):
    """4 px inputs: the last stage's strided convs see 1 x 1 maps."""
    torch.manual_seed(0)
    net = build_backbone(name, True, width)
    for trial in range(3):
        x = torch.randn(32, 3, 4, 4)
        ref = _conv_grads(net, x, False)
        got = _conv_grads(net, x, True)
        for n in ref:
            assert torch.isfinite(got[n]).all(), n
            # Unguarded, the error is 1e16 to 1e37 times the gradient (or inf);
            # bf16 rounding through a 4 px network measured 0.1-0.4 (normwise).
            err = (got[n] - ref[n]).norm() / ref[n].norm()
            assert err < 1.0, (n, trial, float(err))


def test_padding_only_taps_get_exactly_zero_gradient():
    torch.manual_seed(0)
    net = build_backbone("resnet10", True, 8)
    conv = net.layer4[0].conv1
    assert conv.stride == (2, 2) and conv.kernel_size == (3, 3)
    for _ in range(5):
        conv.zero_grad()
        x = torch.randn(16, conv.in_channels, 1, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().sum().backward()
        g = conv.weight.grad.clone()
        g[:, :, 1, 1] = 0  # the centre tap is the only one that sees the input
        assert torch.count_nonzero(g) == 0


def test_guard_keeps_state_dict_and_larger_inputs_in_bf16():
    net = build_backbone("resnet18", True, 64)
    assert set(net.state_dict()) == set(build_backbone("resnet18", True, 64).state_dict())
    conv = net.layer4[0].conv1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(2, conv.in_channels, 4, 4)).dtype == torch.bfloat16
        assert conv(torch.randn(2, conv.in_channels, 1, 1)).dtype == torch.float32
