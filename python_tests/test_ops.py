"""The low-level ops against plain PyTorch, opcheck on every op, gradcheck in float64."""

import pytest
import torch
from torch.library import opcheck

import sslext
from sslext import ops
from sslext import reference as R
from sslext._checks import STRATEGY_CODES, resolve_strategy

STRATEGIES = sorted(STRATEGY_CODES.values())  # the op-level codes: covariance, gram

_ops = torch.ops.sslext


def randn(*shape, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5 + 0.7).to(device=device, dtype=dtype)


@pytest.mark.parametrize("shape", [(2, 3), (16, 40), (50, 7)])
def test_batch_covariance_matches_torch_cov(shape, device):
    z = randn(*shape, device=device)
    got = ops.batch_covariance(z)
    want = torch.cov(z.double().T)
    assert got.dtype == torch.float32 and got.shape == (shape[1], shape[1])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_cross_correlation_matches_batchnorm(device):
    z_a, z_b = randn(24, 12, device=device), randn(24, 12, seed=1, device=device)
    bn = lambda z: torch.nn.functional.batch_norm(z.double(), None, None, training=True, eps=1e-5)
    want = bn(z_a).T @ bn(z_b) / 24
    torch.testing.assert_close(ops.cross_correlation(z_a, z_b).double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("off_weight", [1.0, 0.0051])
@pytest.mark.parametrize("diag_target", [None, 1.0, 0.0])
def test_off_diagonal_penalty(off_weight, diag_target, device):
    c = randn(33, 33, device=device)
    c64 = c.double()
    want = off_weight * R.off_diagonal(c64).pow(2).sum()
    if diag_target is not None:
        want = want + (torch.diagonal(c64) - diag_target).pow(2).sum()
    got = ops.off_diagonal_penalty(c, off_weight, diag_target)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_off_diagonal_penalty_exact_on_dominant_diagonal():
    # Large diagonal, tiny off-diagonal: a "total minus diagonal" formula would
    # cancel to noise; the one-pass kernel never adds the diagonal in.
    c = torch.eye(64) * 1e4 + randn(64, 64) * 1e-3
    want = R.off_diagonal(c.double()).pow(2).sum()
    torch.testing.assert_close(ops.off_diagonal_penalty(c).double(), want, rtol=1e-6, atol=0)


def test_tico_ema_update_in_place(device):
    z = randn(10, 6, device=device)
    c = randn(6, 6, seed=2, device=device)
    c = c @ c.T
    before = c.clone()
    ptr = c.data_ptr()
    assert ops.tico_ema_update_(c, z, 0.9) is None
    assert c.data_ptr() == ptr
    want = 0.9 * before.double() + 0.1 * z.double().T @ z.double() / 10
    torch.testing.assert_close(c.double(), want, rtol=1e-6, atol=1e-6)


def test_tico_ema_update_on_registered_buffer():
    module = torch.nn.Module()
    module.register_buffer("C", torch.zeros(4, 4))
    ops.tico_ema_update_(module.C, torch.ones(3, 4), 0.5)
    torch.testing.assert_close(module.state_dict()["C"], torch.full((4, 4), 0.5))


# ------------------------------------------------------------------ opcheck


def _opcheck_samples(device="cpu", dtype=torch.float32):
    z_a = randn(6, 9, dtype=dtype, device=device).requires_grad_()
    z_b = randn(6, 9, dtype=dtype, seed=1, device=device).requires_grad_()
    c = torch.eye(9, device=device) / 9
    samples = [
        (_ops.batch_covariance, (z_a,)),
        (_ops.cross_correlation, (z_a, z_b, 1e-5)),
        (_ops.off_diagonal_penalty, (randn(7, 7, device=device).requires_grad_(), 0.5, 1.0)),
        (_ops.off_diagonal_penalty, (randn(7, 7, device=device), 1.0, None)),
        (_ops.tico_ema_update_, (c.clone(), z_a.detach(), 0.9)),
    ]
    for strategy in STRATEGIES:
        samples += [
            (_ops.vicreg_loss, (z_a, z_b, 25.0, 25.0, 1.0, 1e-4, strategy)),
            (_ops.barlow_twins_loss, (z_a, z_b, 0.0051, 1e-5, strategy)),
            (_ops.tico_loss, (z_a, z_b, c, 0.9, 8.0, strategy)),
            (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy)),
            (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy, True)),
            # batch_cov_in_graph: the batch matrix B inside the gradient.
            (_ops.tico_loss, (z_a, z_b, c, 0.9, 8.0, strategy, True)),
            (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy, False, True)),
            (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy, True, True)),
        ]
    return samples


@pytest.mark.parametrize("index", range(len(_opcheck_samples())))
def test_opcheck(index, device):
    op, args = _opcheck_samples(device)[index]
    opcheck(op, args)


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Which inputs require grad: both, z_a only (the backward must compute dz_a
# alone: needs_input_grad), none (the forward alone, no autograd).
GRAD_MODES = ["both", "a_only", "none"]
LAYOUTS = ["contiguous", "transposed", "noncontiguous"]


def _view(n, d, dtype, seed, layout):
    """An (n, d) batch: contiguous, a transposed view (strides (1, n)), or every
    other column of a wider batch (strides (2 d, 2))."""
    if layout == "transposed":
        return randn(d, n, dtype=dtype, seed=seed).T
    if layout == "noncontiguous":
        return randn(n, 2 * d, dtype=dtype, seed=seed)[:, ::2]
    return randn(n, d, dtype=dtype, seed=seed)


def _fused_samples(dtype, grad_mode, layout, strategy):
    z_a = _view(6, 9, dtype, 0, layout).requires_grad_(grad_mode != "none")
    z_b = _view(6, 9, dtype, 1, layout).requires_grad_(grad_mode == "both")
    c = torch.eye(9, dtype=torch.float64 if dtype == torch.float64 else torch.float32) / 9
    return [
        (_ops.vicreg_loss, (z_a, z_b, 25.0, 25.0, 1.0, 1e-4, strategy)),
        (_ops.barlow_twins_loss, (z_a, z_b, 0.0051, 1e-5, strategy)),
        (_ops.tico_loss, (z_a, z_b, c, 0.9, 8.0, strategy)),
        (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy)),
        (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy, True)),
        (_ops.tico_loss, (z_a, z_b, c, 0.9, 8.0, strategy, True)),
        (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy, False, True)),
        (_ops.vicreg_tico_loss, (z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, strategy, True, True)),
        (_ops.batch_covariance, (z_a,)),
        (_ops.cross_correlation, (z_a, z_b, 1e-5)),
        (_ops.off_diagonal_penalty, (_view(7, 7, dtype, 2, layout).requires_grad_(grad_mode != "none"), 0.5, 1.0)),
        (_ops.tico_ema_update_, (c.clone(), z_a.detach(), 0.9)),
    ]


FUSED_NAMES = [
    "vicreg",
    "barlow_twins",
    "tico",
    "vicreg_tico",
    "vicreg_tico_proposal",
    "tico_graph",
    "vicreg_tico_graph",
    "vicreg_tico_proposal_graph",
    "batch_covariance",
    "cross_correlation",
    "off_diagonal_penalty",
    "tico_ema_update_",
]
N_FUSED = FUSED_NAMES.index("batch_covariance")  # the fused losses lead _fused_samples
# test_opcheck above runs opcheck's schema test on every op; the matrices below
# (hundreds of calls) run what their variations can change: the fake kernels
# against the real outputs, the autograd registration, and the AOT graph with
# its backward.
MATRIX_UTILS = ("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck_dtypes_and_grad_modes(dtype, grad_mode):
    """Half precision in, float32 out (the fake kernels' rule), and the no-grad and
    one-input-grad paths, opchecked for every op in every dtype (Gram path, N < D)."""
    for op, args in _fused_samples(dtype, grad_mode, "contiguous", 1):
        opcheck(op, args, test_utils=MATRIX_UTILS)


@pytest.mark.parametrize("layout", ["transposed", "noncontiguous"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_opcheck_layouts(layout, strategy):
    """Transposed and strided inputs: the fakes must promise the strides the real
    ops return (contiguous gradients), forward and backward."""
    samples = _fused_samples(torch.float32, "both", layout, strategy)
    if strategy == STRATEGY_CODES["covariance"]:
        samples = samples[:N_FUSED]  # the low-level ops have no strategy: checked once
    else:
        samples += _fused_samples(torch.bfloat16, "a_only", layout, strategy)[:N_FUSED]
    for op, args in samples:
        opcheck(op, args, test_utils=MATRIX_UTILS)


def _backward_samples(dtype, mask, layout="contiguous"):
    z_a, z_b = _view(6, 9, dtype, 0, layout), _view(6, 9, dtype, 1, layout)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    c = torch.eye(9, dtype=acc) / 9
    g4, g3 = randn(4, dtype=acc, seed=3), randn(3, dtype=acc, seed=4)
    samples = []
    for strategy in STRATEGIES:
        out = _ops.vicreg_loss(z_a, z_b, 25.0, 25.0, 1.0, 1e-4, strategy)
        samples.append((_ops._vicreg_loss_backward, (g4, z_a, z_b, *out[1:], 25.0, 25.0, 1.0, 1e-4, strategy, mask)))
        out = _ops.barlow_twins_loss(z_a, z_b, 0.0051, 1e-5, strategy)
        samples.append((_ops._barlow_twins_loss_backward, (g3, *out[1:], 0.0051, strategy, dtype, mask)))
        for graph in (False, True):
            out = _ops.tico_loss(z_a, z_b, c, 0.9, 8.0, strategy, graph)
            samples.append((_ops._tico_loss_backward, (g3, *out[1:6], 8.0, dtype, mask)))
    for proposal in (False, True):
        for graph in (False, True):
            out = _ops.vicreg_tico_loss(z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, 1, proposal, graph)
            samples.append(
                (_ops._vicreg_tico_loss_backward, (g4, z_a, z_b, *out[2:7], 25.0, 25.0, 1.0, 1e-4, proposal, mask))
            )
    return samples


MASKS = [[True, True], [True, False], [False, True], [False, False]]


@pytest.mark.parametrize(
    "dtype, mask", [(dtype, [True, True]) for dtype in DTYPES] + [(torch.float32, mask) for mask in MASKS[1:]], ids=str
)
def test_opcheck_backward_ops(dtype, mask):
    for op, args in _backward_samples(dtype, mask):
        opcheck(op, args)


def test_opcheck_backward_ops_transposed():
    for op, args in _backward_samples(torch.float32, [True, True], "transposed"):
        opcheck(op, args, test_utils=MATRIX_UTILS)


@pytest.mark.parametrize("mask", MASKS[1:], ids=str)
def test_backward_output_mask(mask):
    """A gradient output_mask does not ask for is not computed (an empty tensor);
    the one it asks for is the same as with both."""
    for (op, args), (_, full_args) in zip(
        _backward_samples(torch.float32, mask), _backward_samples(torch.float32, [True, True])
    ):
        got, want = op(*args), op(*full_args)
        for wanted, g, w in zip(mask, got, want):
            if wanted:
                torch.testing.assert_close(g, w, rtol=0, atol=0)
                assert g.is_contiguous()
            else:
                assert g.shape == (0,)


@pytest.mark.parametrize("name", ["vicreg_loss", "barlow_twins_loss", "tico_loss", "vicreg_tico_loss"])
def test_backward_honours_needs_input_grad(name):
    """Only z_a requires grad: autograd asks the backward op for dz_a alone."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        masks = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "sslext" and func.__name__.startswith("_" + name + "_backward"):
                self.masks.append(list(args[-1]))
            return func(*args, **(kwargs or {}))

    z_a, z_b = randn(6, 9).requires_grad_(), randn(6, 9, seed=1)
    c = torch.eye(9) / 9
    extra = {
        "vicreg_loss": (25.0, 25.0, 1.0, 1e-4, 1),
        "barlow_twins_loss": (0.0051, 1e-5, 1),
        "tico_loss": (c, 0.9, 8.0, 1),
        "vicreg_tico_loss": (c, 25.0, 25.0, 1.0, 0.9, 1e-4, 1),
    }[name]
    with Record():
        getattr(_ops, name)(z_a, z_b, *extra)[0].sum().backward()
    assert Record.masks == [[True, False]]
    grad_only_a = z_a.grad.clone()
    z_a.grad = None
    z_b.requires_grad_()
    getattr(_ops, name)(z_a, z_b, *extra)[0].sum().backward()
    torch.testing.assert_close(grad_only_a, z_a.grad, rtol=0, atol=0)
    assert z_b.grad is not None


# ---------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", ["tico_loss", "vicreg_tico_loss", "vicreg_tico_proposal"])
def test_gradcheck_batch_cov_in_graph(name, strategy, beta):
    """With B in the graph finite differences see the whole C_new, centering and
    row normalisation included, so beta < 1 is checked exactly (beta = 0: B alone)."""
    z_a = randn(5, 7, dtype=torch.float64).requires_grad_()
    z_b = randn(5, 7, dtype=torch.float64, seed=1).requires_grad_()
    c = torch.eye(7, dtype=torch.float64) / 7 + 0.01
    c = (c + c.T) / 2
    op = getattr(_ops, name.replace("_proposal", "_loss"))
    extra = {
        "tico_loss": (c, beta, 8.0, strategy, True),
        "vicreg_tico_loss": (c, 25.0, 25.0, 1.0, beta, 1e-4, strategy, False, True),
        "vicreg_tico_proposal": (c, 25.0, 25.0, 1.0, beta, 1e-4, strategy, True, True),
    }[name]
    assert torch.autograd.gradcheck(lambda a, b: op(a, b, *extra)[0], (z_a, z_b))
    # The detached reading differs from it wherever beta < 1: the option is live.
    detached = extra[:-1] + (False,)
    ga = torch.autograd.grad(op(z_a, z_b, *extra)[0][0], z_a)[0]
    gd = torch.autograd.grad(op(z_a, z_b, *detached)[0][0], z_a)[0]
    assert (ga - gd).abs().max() > 1e-3


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "name", ["vicreg_loss", "barlow_twins_loss", "tico_loss", "vicreg_tico_loss", "vicreg_tico_proposal"]
)
def test_gradcheck_fused_losses(name, strategy):
    z_a = randn(5, 7, dtype=torch.float64).requires_grad_()
    z_b = randn(5, 7, dtype=torch.float64, seed=1).requires_grad_()
    c = torch.eye(7, dtype=torch.float64) / 7 + 0.01
    c = (c + c.T) / 2
    op = getattr(_ops, name.replace("_proposal", "_loss"))
    extra = {
        "vicreg_loss": (25.0, 25.0, 1.0, 1e-4, strategy),
        "barlow_twins_loss": (0.0051, 1e-5, strategy),
        # TiCo's batch term B is a stop-gradient, which finite differences
        # cannot see; with beta = 1 C_new = c and the gradient is exact. The
        # detached B is checked against the reference in test_losses.py.
        "tico_loss": (c, 1.0, 8.0, strategy),
        "vicreg_tico_loss": (c, 25.0, 25.0, 1.0, 1.0, 1e-4, strategy),
        "vicreg_tico_proposal": (c, 25.0, 25.0, 1.0, 1.0, 1e-4, strategy, True),
    }[name]
    fn = lambda a, b: op(a, b, *extra)[0]
    # Every term of the terms vector, not just the loss, gets its gradient checked.
    assert torch.autograd.gradcheck(fn, (z_a, z_b))


def test_gradcheck_low_level_ops():
    z_a = randn(5, 4, dtype=torch.float64).requires_grad_()
    z_b = randn(5, 4, dtype=torch.float64, seed=1).requires_grad_()
    c = randn(4, 4, dtype=torch.float64, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(ops.batch_covariance, (z_a,))
    assert torch.autograd.gradcheck(lambda a, b: ops.cross_correlation(a, b, 1e-5), (z_a, z_b))
    assert torch.autograd.gradcheck(lambda m: ops.off_diagonal_penalty(m, 0.3, 1.0), (c,))
    assert torch.autograd.gradcheck(lambda m: ops.off_diagonal_penalty(m, 2.0, None), (c,))


def test_build_info():
    info = sslext.build_info()
    assert set(info) >= {"with_cuda", "cuda_archs", "cuda_version", "torch_version", "cuda_available"}
    assert isinstance(info["with_cuda"], bool)
    if info["with_cuda"]:
        assert info["cuda_archs"] and info["cuda_version"]
    assert info["torch_version"].split("+")[0].count(".") == 2


def test_strategy_codes():
    assert resolve_strategy("gram", 100, 10) == 1
    assert resolve_strategy("covariance", 10, 100) == 0
