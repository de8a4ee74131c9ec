"""Bad input: a clear error naming the argument, from the functional API, the modules and the ops."""

import pytest
import torch
from fuzz_ops import ARGS as FUZZ_ARGS
from fuzz_ops import build_valid

import sslext
import sslext.functional as F
from sslext import ops
from sslext._checks import STRATEGY_CODES


def _cov_for(z):
    d = z.shape[-1] if isinstance(z, torch.Tensor) and z.dim() >= 1 else 1
    return torch.zeros(d, d)


LOSSES = {
    "vicreg": lambda a, b: F.vicreg_loss(a, b),
    "barlow_twins": lambda a, b: F.barlow_twins_loss(a, b),
    "tico": lambda a, b: F.tico_loss(a, b, _cov_for(a)),
    "vicreg_tico": lambda a, b: F.vicreg_tico_loss(a, b, _cov_for(a)),
    "VICRegLoss": lambda a, b: sslext.VICRegLoss()(a, b),
    "BarlowTwinsLoss": lambda a, b: sslext.BarlowTwinsLoss()(a, b),
    "TiCoLoss": lambda a, b: sslext.TiCoLoss()(a, b),
    "VICRegTiCoLoss": lambda a, b: sslext.VICRegTiCoLoss()(a, b),
}

BAD_PAIRS = [
    ("not_2d", torch.randn(8), torch.randn(8), ValueError, r"z_a must be 2-D \(batch, dim\)"),
    ("3d", torch.randn(2, 4, 8), torch.randn(2, 4, 8), ValueError, r"z_a must be 2-D"),
    ("one_row", torch.randn(1, 8), torch.randn(1, 8), ValueError, r"at least 2 rows"),
    ("shape_mismatch", torch.randn(4, 8), torch.randn(4, 9), ValueError, r"z_b must have the shape of z_a"),
    ("batch_mismatch", torch.randn(4, 8), torch.randn(5, 8), ValueError, r"z_b must have the shape of z_a"),
    (
        "integer",
        torch.ones(4, 8, dtype=torch.int64),
        torch.ones(4, 8, dtype=torch.int64),
        TypeError,
        r"z_a must be float16, bfloat16, float32 or float64",
    ),
    (
        "complex",
        torch.randn(4, 8, dtype=torch.complex64),
        torch.randn(4, 8, dtype=torch.complex64),
        TypeError,
        r"z_a must be float16",
    ),
    (
        "dtype_mismatch",
        torch.randn(4, 8),
        torch.randn(4, 8, dtype=torch.float64),
        TypeError,
        r"z_b must have the dtype of z_a",
    ),
    (
        "devices_differ",
        torch.randn(4, 8),
        torch.randn(4, 8, device="meta"),
        ValueError,
        r"z_b must be on the device of z_a",
    ),
    ("not_tensor", [[1.0, 2.0]], [[1.0, 2.0]], TypeError, r"z_a must be a torch.Tensor"),
]


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("bad", BAD_PAIRS, ids=[b[0] for b in BAD_PAIRS])
def test_bad_embeddings(loss, bad):
    _, z_a, z_b, exc, msg = bad
    with pytest.raises(exc, match=msg):
        LOSSES[loss](z_a, z_b)


@pytest.mark.parametrize(
    "c, msg",
    [
        (torch.zeros(7, 7), r"c must have shape \(8, 8\)"),
        (torch.zeros(8), r"c must have shape \(8, 8\)"),
        (torch.zeros(8, 8, dtype=torch.float16), r"c must be float32 or float64"),
        (torch.zeros(8, 8, device="meta"), r"c must be on the device of z"),
    ],
)
@pytest.mark.parametrize("fn", ["tico", "vicreg_tico", "ema"])
def test_bad_running_covariance(c, msg, fn):
    z = torch.randn(4, 8)
    call = {
        "tico": lambda: F.tico_loss(z, z, c),
        "vicreg_tico": lambda: F.vicreg_tico_loss(z, z, c),
        "ema": lambda: ops.tico_ema_update_(c, z, 0.9),
    }[fn]
    with pytest.raises((ValueError, TypeError), match=msg):
        call()


def test_module_with_wrong_sized_buffer():
    loss_fn = sslext.TiCoLoss(dim=16)
    # The module's error names its buffer and the way out, not the functional's ``c``.
    with pytest.raises(
        ValueError,
        match=r"embedding dim 8 but the running covariance C is \(16, 16\).*"
        r"reset_covariance\(dim=8\)",
    ):
        loss_fn(torch.randn(4, 8), torch.randn(4, 8))


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="strategy must be one of"):
        F.vicreg_loss(torch.randn(4, 8), torch.randn(4, 8), strategy="fast")
    with pytest.raises(ValueError, match="strategy must be one of"):
        sslext.BarlowTwinsLoss(strategy="fast")
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        sslext.TiCoLoss(beta=1.5)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        ops.tico_ema_update_(torch.zeros(8, 8), torch.randn(4, 8), -0.1)
    with pytest.raises(ValueError, match="eps must be >= 0, got -1.0"):  # the compat modules' wording
        sslext.VICRegLoss(eps=-1.0)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        sslext.VICRegTiCoLoss(dim=0)


def test_bad_matrix_for_penalty():
    with pytest.raises(ValueError, match="c must be a square 2-D matrix"):
        ops.off_diagonal_penalty(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="c must be a floating-point matrix"):
        ops.off_diagonal_penalty(torch.zeros(3, 3, dtype=torch.int32))


def test_raw_ops_check_in_cpp_too():
    """The C++ side names the argument as well, for callers of torch.ops.sslext directly."""
    with pytest.raises(RuntimeError, match=r"z_a must be 2-D \(batch, dim\)"):
        torch.ops.sslext.vicreg_loss(torch.randn(8), torch.randn(8), 25.0, 25.0, 1.0, 1e-4, 0)
    with pytest.raises(RuntimeError, match=r"z_b must have the shape of z_a"):
        torch.ops.sslext.barlow_twins_loss(torch.randn(4, 8), torch.randn(4, 7), 0.0051, 1e-5, 0)
    with pytest.raises(RuntimeError, match=r"strategy must be 0 \(covariance\) or 1 \(gram\)"):
        torch.ops.sslext.vicreg_loss(torch.randn(4, 8), torch.randn(4, 8), 25.0, 25.0, 1.0, 1e-4, 7)
    with pytest.raises(RuntimeError, match=r"c must have shape \(8, 8\)"):
        torch.ops.sslext.tico_ema_update_(torch.zeros(3, 3), torch.randn(4, 8), 0.9)


def test_nan_inputs_propagate_not_crash():
    """Documented behaviour: NaN/Inf in the embeddings give a NaN loss (no check costs a sync)."""
    z = torch.randn(6, 10)
    z[2, 3] = float("nan")
    assert torch.isnan(F.vicreg_loss(z, torch.randn(6, 10)))
    assert torch.isnan(F.barlow_twins_loss(z, torch.randn(6, 10)))


def test_forced_gram_beyond_its_regime_warns():
    with pytest.warns(UserWarning, match=r"strategy='gram' with N=32 >= D=8"):
        F.vicreg_loss(torch.randn(32, 8), torch.randn(32, 8), strategy="gram")


# ---------------------------------------------------------------- the backward ops


def _vicreg_backward_args(grad_terms, **change):
    z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    out = torch.ops.sslext.vicreg_loss(z_a, z_b, 25.0, 25.0, 1.0, 1e-4, 0)
    args = dict(
        grad_terms=grad_terms,
        z_a=z_a,
        z_b=z_b,
        mean_a=out[1],
        mean_b=out[2],
        var_a=out[3],
        var_b=out[4],
        mat_a=out[5],
        mat_b=out[6],
        inv_coeff=25.0,
        var_coeff=25.0,
        cov_coeff=1.0,
        eps=1e-4,
        strategy=STRATEGY_CODES["covariance"],
        output_mask=[True, True],
    )
    args.update(change)
    return list(args.values())


@pytest.mark.parametrize(
    "grad_terms, change, msg",
    [
        # Once a segmentation fault, and a read past the end of grad_terms.
        (torch.ones(0), {}, r"grad_terms must have shape \[4\]"),
        (torch.ones(1), {}, r"grad_terms must have shape \[4\]"),
        (torch.ones(1, 4), {}, r"grad_terms must have shape \[4\]"),
        (torch.ones(4, dtype=torch.int64), {}, r"grad_terms must be float16"),
        (torch.ones(4), {"mean_a": torch.zeros(7)}, r"mean_a must have shape \[8\]"),
        (torch.ones(4), {"var_b": torch.zeros(8, dtype=torch.float64)}, r"var_b must be Float"),
        (torch.ones(4), {"mat_b": torch.zeros(4, 4)}, r"mat_b must have shape \[8, 8\].*strategy=0"),
        (torch.ones(4), {"strategy": STRATEGY_CODES["gram"]}, r"mat_a must have shape \[4, 4\].*strategy=1"),
        (torch.ones(4), {"eps": float("nan")}, r"eps must be a finite non-negative number"),
        (torch.ones(4), {"output_mask": [True]}, r"output_mask must have 2 entries"),
    ],
)
def test_backward_op_checks_every_argument(grad_terms, change, msg):
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.sslext._vicreg_loss_backward(*_vicreg_backward_args(grad_terms, **change))


def test_backward_ops_check_their_saved_tensors():
    ops_ = torch.ops.sslext
    z_a, z_b, c = torch.randn(4, 8), torch.randn(4, 8), torch.eye(8)
    out = ops_.barlow_twins_loss(z_a, z_b, 0.0051, 1e-5, 1)
    with pytest.raises(RuntimeError, match=r"mat must have shape \[2, 4, 4\]"):
        ops_._barlow_twins_loss_backward(torch.ones(3), *out[1:5], out[5][0], 0.0051, 1, torch.float32, [True, True])
    with pytest.raises(RuntimeError, match=r"out_dtype Double does not match norm_a"):
        ops_._barlow_twins_loss_backward(torch.ones(3), *out[1:], 0.0051, 1, torch.float64, [True, True])
    out = ops_.tico_loss(z_a, z_b, c, 0.9, 8.0, 0)
    with pytest.raises(RuntimeError, match=r"proj must have shape \[4, 8\]"):
        ops_._tico_loss_backward(torch.ones(3), *out[1:5], out[5][:3], 8.0, torch.float32, [True, True])
    out = ops_.vicreg_tico_loss(z_a, z_b, c, 25.0, 25.0, 1.0, 0.9, 1e-4, 0, False)
    with pytest.raises(RuntimeError, match=r"proj must have shape \[4, 8\].*proposal=True"):
        ops_._vicreg_tico_loss_backward(torch.ones(4), z_a, z_b, *out[2:7], 25.0, 25.0, 1.0, 1e-4, True, [True, True])


def test_raw_ops_refuse_non_finite_scalars():
    z = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="inv_coeff must be a finite number"):
        torch.ops.sslext.vicreg_loss(z, z, float("nan"), 25.0, 1.0, 1e-4, 0)
    with pytest.raises(RuntimeError, match="rho must be a finite number"):
        torch.ops.sslext.tico_loss(z, z, torch.eye(8), 0.9, float("inf"), 0)
    with pytest.raises(RuntimeError, match="lambd must be a finite number"):
        torch.ops.sslext.barlow_twins_loss(z, z, float("nan"), 1e-5, 0)
    with pytest.raises(RuntimeError, match="c must not have overlapping memory"):
        torch.ops.sslext.tico_ema_update_(torch.zeros(1, 8).expand(8, 8), z, 0.9)


# ------------------------------------------------------- CUDA tensors, CPU-only build

_NO_CUDA_KERNELS = not sslext.build_info()["with_cuda"]


@pytest.mark.skipif(not _NO_CUDA_KERNELS, reason="this build has CUDA kernels")
@pytest.mark.parametrize("op", sorted(set(FUZZ_ARGS) - {"build_info"}))
def test_cpu_only_build_says_how_to_rebuild_for_cuda(op):
    """A build without CUDA kernels registers every op for the CUDA dispatch key:
    CUDA tensors get how to rebuild instead of the dispatcher's bare 'could not run
    ... CUDA backend'. No CUDA tensor can exist here, so the CUDA kernel is called
    by redispatching to the CUDA key; that CUDA tensors reach that key is the
    dispatcher's job (unverified on this GPU-less machine)."""
    case = {"op": op, "n": 4, "d": 6, "dtype": "float32", "strategy": 0, "proposal": False, "seed": 0}
    args = build_valid(case)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"sslext::{op}", "CUDA")
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    with pytest.raises(
        NotImplementedError,
        match=rf"sslext::{op} was given CUDA tensors, but .*"
        r"Rebuild sslext with CUDA: .*SSLEXT_FORCE_CUDA=1 pip install --no-build-isolation \.",
    ):
        getattr(torch.ops.sslext, op).default.redispatch(cuda, *args)
