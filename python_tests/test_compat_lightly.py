"""sslext.compat.lightly against lightly 1.6's documented loss semantics.

lightly is not a test dependency: the references below are written from its
loss modules' documented behaviour (lightly.loss.vicreg_loss,
barlow_twins_loss, tico_loss), in float64. benchmarks/bench_lightly_compat.py
compares against the installed package itself.
"""

import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF
from conftest import assert_forward_close, assert_grad_close
from test_losses import make_views

from sslext.compat.lightly import BarlowTwinsLoss, TiCoLoss, VICRegLoss

SHAPES = [(16, 64), (64, 16), (37, 53)]


# ---------------------------------------------------------------- references


def ref_vicreg(z_a, z_b, lambda_param=25.0, mu_param=25.0, nu_param=1.0, eps=1e-4, stats_a=None, stats_b=None):
    """lightly: invariance = mse; variance = mean(relu(1 - sqrt(var + eps))) per branch, halved sum;
    covariance = off-diagonal squares of the unbiased covariance / dim, summed over branches,
    averaged over any middle dims. ``stats_*``: the rows the variance and covariance see
    (the gathered batch), when they differ from the invariance's."""
    stats_a = z_a if stats_a is None else stats_a
    stats_b = z_b if stats_b is None else stats_b

    def var(x):
        return TF.relu(1.0 - torch.sqrt(x.var(dim=0) + eps)).mean()

    def cov(x):
        x = x - x.mean(dim=0)
        d = x.shape[-1]
        c = torch.einsum("b...c,b...d->...cd", x, x) / (x.shape[0] - 1)
        off = ~torch.eye(d, dtype=torch.bool)
        return (c[..., off].pow(2).sum(-1) / d).mean()

    return (
        lambda_param * TF.mse_loss(z_a, z_b)
        + mu_param * 0.5 * (var(stats_a) + var(stats_b))
        + nu_param * (cov(stats_a) + cov(stats_b))
    )


def _bn(z):
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)


def ref_barlow_c(z_a, z_b):
    return _bn(z_a).T @ _bn(z_b) / z_a.shape[0]


def ref_barlow_from_c(c, lambda_param=5e-3):
    off = ~torch.eye(c.shape[0], dtype=torch.bool)
    return (torch.diagonal(c) - 1).pow(2).sum() + lambda_param * c[off].pow(2).sum()


class RefTiCo:
    """lightly's TiCo: C is None until the first call, then replaced by C_new on updating calls."""

    def __init__(self, beta=0.9, rho=8.0):
        self.beta, self.rho, self.C = beta, rho, None

    def __call__(self, z_a, z_b, update_covariance_matrix=True):
        z_a, z_b = TF.normalize(z_a, dim=1), TF.normalize(z_b, dim=1)
        b = (z_a.T @ z_a).detach() / z_a.shape[0]
        if self.C is None:
            self.C = torch.zeros_like(b)
        c = self.beta * self.C + (1 - self.beta) * b
        loss = 1.0 - (z_a * z_b).sum(1).mean() + self.rho * ((z_a @ c) * z_a).sum(1).mean()
        if update_covariance_matrix:
            self.C = c.detach()
        return loss


def _value_and_grads(fn, z_a, z_b, **kw):
    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()
    loss = fn(a, b, **kw)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def _assert_parity(ours, ref, dtype=torch.float32):
    assert_forward_close(ours[0], ref[0], dtype)
    assert_grad_close(ours[1], ref[1], dtype)
    assert_grad_close(ours[2], ref[2], dtype)


# ---------------------------------------------------------------- signatures


LIGHTLY_SIGNATURES = {
    VICRegLoss: [
        ("lambda_param", 25.0),
        ("mu_param", 25.0),
        ("nu_param", 1.0),
        ("gather_distributed", False),
        ("eps", 1e-4),
    ],
    BarlowTwinsLoss: [("lambda_param", 5e-3), ("gather_distributed", False)],
    TiCoLoss: [("beta", 0.9), ("rho", 8.0), ("gather_distributed", False)],
}


@pytest.mark.parametrize("cls", list(LIGHTLY_SIGNATURES), ids=lambda c: c.__name__)
def test_constructor_signature_and_attributes_are_lightlys(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [(p.name, p.default) for p in params] == LIGHTLY_SIGNATURES[cls]
    loss_fn = cls()
    for name, default in LIGHTLY_SIGNATURES[cls]:
        assert getattr(loss_fn, name) == default
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}


def test_tico_forward_keyword_is_lightlys():
    params = list(inspect.signature(TiCoLoss.forward).parameters.values())
    assert [(p.name, p.default) for p in params[1:]] == [
        ("z_a", inspect.Parameter.empty),
        ("z_b", inspect.Parameter.empty),
        ("update_covariance_matrix", True),
    ]


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
@pytest.mark.parametrize(
    "kwargs", [{}, {"lambda_param": 10.0, "mu_param": 3.0, "nu_param": 0.5, "eps": 1e-3}], ids=["defaults", "custom"]
)
def test_vicreg_value_and_grads(shape, kwargs):
    z_a, z_b = make_views(*shape)
    ours = _value_and_grads(VICRegLoss(**kwargs), z_a, z_b)
    ref = _value_and_grads(lambda a, b: ref_vicreg(a, b, **kwargs), z_a.double(), z_b.double())
    _assert_parity(ours, ref)


def test_vicreg_float64_is_exact_to_float64_tolerance():
    z_a, z_b = make_views(24, 40, dtype=torch.float64)
    ours = _value_and_grads(VICRegLoss(), z_a, z_b)
    assert ours[0].dtype == torch.float64
    _assert_parity(ours, _value_and_grads(ref_vicreg, z_a, z_b), torch.float64)


def test_vicreg_accepts_lightlys_batch_middle_dims():
    # (batch, ..., dim): lightly's generalised terms (VICRegL's local features)
    z_a, z_b = make_views(12, 3 * 2 * 20)
    z_a, z_b = z_a.reshape(12, 3, 2, 20), z_b.reshape(12, 3, 2, 20)
    ours = _value_and_grads(VICRegLoss(), z_a, z_b)
    ref = _value_and_grads(ref_vicreg, z_a.double(), z_b.double())
    _assert_parity(ours, ref)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
@pytest.mark.parametrize("lambda_param", [5e-3, 0.05])
def test_barlow_value_and_grads(shape, lambda_param):
    z_a, z_b = make_views(*shape)
    ours = _value_and_grads(BarlowTwinsLoss(lambda_param), z_a, z_b)
    ref = _value_and_grads(lambda a, b: ref_barlow_from_c(ref_barlow_c(a, b), lambda_param), z_a.double(), z_b.double())
    _assert_parity(ours, ref)


def test_barlow_float64():
    z_a, z_b = make_views(24, 40, dtype=torch.float64)
    ours = _value_and_grads(BarlowTwinsLoss(), z_a, z_b)
    ref = _value_and_grads(lambda a, b: ref_barlow_from_c(ref_barlow_c(a, b)), z_a, z_b)
    _assert_parity(ours, ref, torch.float64)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
def test_tico_running_covariance_over_steps(shape):
    """Value, gradients and C over several steps, including a non-updating call."""
    ours, ref = TiCoLoss(beta=0.8, rho=5.0), RefTiCo(beta=0.8, rho=5.0)
    assert ours.C is None
    for step, update in enumerate([True, True, False, True, True]):
        z_a, z_b = make_views(*shape, seed=step)
        got = _value_and_grads(ours, z_a, z_b, update_covariance_matrix=update)
        want = _value_and_grads(ref, z_a.double(), z_b.double(), update_covariance_matrix=update)
        _assert_parity(got, want)
        assert ours.C.shape == (shape[1], shape[1]) and ours.C.dtype == torch.float32
        assert_grad_close(ours.C, ref.C)
        assert not ours.C.requires_grad


def test_tico_non_updating_first_call_leaves_zeros():
    ours = TiCoLoss()
    z_a, z_b = make_views(8, 12)
    ours(z_a, z_b, update_covariance_matrix=False)
    assert torch.equal(ours.C, torch.zeros(12, 12))


def test_tico_rebinds_c_and_keeps_it_out_of_state_dict():
    ours = TiCoLoss()
    z_a, z_b = make_views(8, 12)
    ours(z_a, z_b)
    before = ours.C
    snapshot = before.clone()
    ours(z_a, z_b)
    # lightly assigns a new tensor: a reference to the old C does not change
    assert torch.equal(before, snapshot) and ours.C is not before
    assert not torch.equal(ours.C, before)
    assert "C" not in ours.state_dict()
    assert ours.to(torch.device("cpu")).C is ours.C


def test_tico_float64_keeps_c_in_float64():
    ours, ref = TiCoLoss(), RefTiCo()
    for step in range(3):
        z_a, z_b = make_views(10, 30, dtype=torch.float64, seed=step)
        _assert_parity(_value_and_grads(ours, z_a, z_b), _value_and_grads(ref, z_a, z_b), torch.float64)
    assert ours.C.dtype == torch.float64
    assert_grad_close(ours.C, ref.C, torch.float64)


def test_gather_without_process_group_is_local_as_in_lightly():
    # lightly gathers only when a process group is initialised; otherwise the flag is a no-op
    z_a, z_b = make_views(16, 24)
    for cls in (VICRegLoss, BarlowTwinsLoss):
        assert torch.equal(cls(gather_distributed=True)(z_a, z_b), cls()(z_a, z_b))
    assert torch.equal(TiCoLoss(gather_distributed=True)(z_a, z_b), TiCoLoss()(z_a, z_b))


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: VICRegLoss(lambda_param="25"), TypeError, "lambda_param"),
        (lambda: VICRegLoss(mu_param=float("nan")), ValueError, "mu_param"),
        (lambda: VICRegLoss(nu_param=None), TypeError, "nu_param"),
        (lambda: VICRegLoss(eps=-1e-4), ValueError, "eps"),
        (lambda: VICRegLoss(gather_distributed=1), TypeError, "gather_distributed"),
        (lambda: BarlowTwinsLoss(lambda_param=float("inf")), ValueError, "lambda_param"),
        (lambda: BarlowTwinsLoss(gather_distributed="yes"), TypeError, "gather_distributed"),
        (lambda: TiCoLoss(beta=1.5), ValueError, "beta"),
        (lambda: TiCoLoss(beta=-0.1), ValueError, "beta"),
        (lambda: TiCoLoss(rho=True), TypeError, "rho"),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("cls", [VICRegLoss, BarlowTwinsLoss, TiCoLoss], ids=lambda c: c.__name__)
def test_bad_inputs_name_the_argument(cls):
    z = torch.randn(8, 16)
    with pytest.raises(ValueError, match="same shape"):
        cls()(z, torch.randn(8, 17))
    with pytest.raises(ValueError, match="batch size > 1"):
        cls()(z[:1], z[:1])
    with pytest.raises(ValueError, match="z_a must have shape"):
        cls()(z[0], z[0])
    with pytest.raises(TypeError, match="z_b must be a torch.Tensor"):
        cls()(z, z.numpy())


def _tico_after_a_call_at_dim(d):
    loss_fn = TiCoLoss()
    loss_fn(*make_views(8, d))
    return loss_fn


# What lightly 1.6 raises for each bad input (lightly/loss/{vicreg,barlow_twins,tico}_loss.py):
# its asserts on the batch size and on equal shapes (VICReg, TiCo), and otherwise the torch
# call that fails first on its path: .shape[0] or F.batch_norm / F.normalize(dim=1) on too
# few dims (IndexError), the covariance einsum, the (D, D) matmuls or the C update on the
# wrong shapes (RuntimeError), F.batch_norm on a batch of one (ValueError), .shape / .size()
# of a non-tensor (AttributeError); Barlow Twins' views of different dims fail its
# square-matrix assert (or torch.stack's RuntimeError where the views are stacked).
_Z = torch.randn(8, 16)
LIGHTLY_ERRORS = [
    ("vicreg-not-a-tensor", lambda: VICRegLoss()(_Z.tolist(), _Z), (AttributeError, TypeError), "z_a must be"),
    ("vicreg-0d", lambda: VICRegLoss()(_Z[0, 0], _Z[0, 0]), (IndexError, ValueError), "z_a must have shape"),
    ("vicreg-batch-1", lambda: VICRegLoss()(_Z[:1], _Z[:1]), (AssertionError, ValueError), "batch size > 1"),
    ("vicreg-shapes", lambda: VICRegLoss()(_Z, _Z[:, :8]), (AssertionError, ValueError), "same shape"),
    ("vicreg-1d", lambda: VICRegLoss()(_Z[0], _Z[0]), (RuntimeError, ValueError), "z_a must have shape"),
    ("barlow-not-a-tensor", lambda: BarlowTwinsLoss()(_Z, "z"), (AttributeError, TypeError), "z_b must be"),
    ("barlow-0d", lambda: BarlowTwinsLoss()(_Z[0, 0], _Z[0, 0]), (IndexError, ValueError), "z_a must have shape"),
    ("barlow-1d", lambda: BarlowTwinsLoss()(_Z, _Z[0]), (IndexError, ValueError), "z_b must have shape"),
    ("barlow-batch-1", lambda: BarlowTwinsLoss()(_Z[:1], _Z[:1]), (ValueError,), "batch size > 1"),
    ("barlow-3d", lambda: BarlowTwinsLoss()(_Z[:, None], _Z[:, None]), (RuntimeError, ValueError), "z_a must have"),
    ("barlow-batches", lambda: BarlowTwinsLoss()(_Z, _Z[:6]), (RuntimeError, ValueError), "same shape"),
    ("barlow-dims", lambda: BarlowTwinsLoss()(_Z, _Z[:, :8]), (AssertionError, RuntimeError, ValueError), "same shape"),
    ("tico-not-a-tensor", lambda: TiCoLoss()(None, _Z), (AttributeError, TypeError), "z_a must be"),
    ("tico-0d", lambda: TiCoLoss()(_Z[0, 0], _Z[0, 0]), (IndexError, ValueError), "z_a must have shape"),
    ("tico-batch-1", lambda: TiCoLoss()(_Z[:1], _Z[:1]), (AssertionError, ValueError), "batch size > 1"),
    ("tico-shapes", lambda: TiCoLoss()(_Z, _Z[:4]), (AssertionError, ValueError), "same shape"),
    ("tico-1d", lambda: TiCoLoss()(_Z[0], _Z[0]), (IndexError, ValueError), "z_a must have shape"),
    ("tico-3d", lambda: TiCoLoss()(_Z[:, None], _Z[:, None]), (RuntimeError, ValueError), "z_a must have shape"),
    (
        "tico-dim-change",
        lambda: _tico_after_a_call_at_dim(12)(*make_views(8, 16)),
        (RuntimeError, ValueError),
        "running covariance C",
    ),
]


@pytest.mark.parametrize("call, types, match", [c[1:] for c in LIGHTLY_ERRORS], ids=[c[0] for c in LIGHTLY_ERRORS])
def test_bad_inputs_raise_what_lightly_raises(call, types, match):
    with pytest.raises(types[0], match=match) as e:
        call()
    for t in types:  # lightly's type, and ours (ValueError / TypeError) naming the argument
        assert isinstance(e.value, t), (type(e.value).__mro__, t)


@pytest.mark.parametrize("cls", [BarlowTwinsLoss, TiCoLoss], ids=lambda c: c.__name__)
def test_middle_dims_refused_where_lightly_needs_2d(cls):
    z = torch.randn(8, 2, 16)
    with pytest.raises(ValueError, match=r"z_a must have shape \(batch, dim\)"):
        cls()(z, z)


def test_tico_dim_change_is_a_clear_error():
    loss_fn = TiCoLoss()
    loss_fn(*make_views(8, 12))
    with pytest.raises(ValueError, match="running covariance C"):
        loss_fn(*make_views(8, 16))
    loss_fn.C = None  # a new run starts from scratch, as with lightly
    loss_fn(*make_views(8, 16))


# ---------------------------------------------------------------- distributed (2 gloo ranks)

WORLD, N, D = 2, 12, 20


def _compat_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from dist_helpers import process_group

    with process_group(rank, world, init_file):
        z_a, z_b = make_views(N, D)
        rows = slice(rank * N // world, (rank + 1) * N // world)
        res = {}
        for name, loss_fn in (
            ("vicreg", VICRegLoss(gather_distributed=True)),
            ("barlow", BarlowTwinsLoss(gather_distributed=True)),
            ("tico", TiCoLoss(gather_distributed=True)),
        ):
            steps = []
            for _ in range(2 if name == "tico" else 1):
                steps.append(_value_and_grads(loss_fn, z_a[rows], z_b[rows]))
            res[name] = {"steps": steps, "C": getattr(loss_fn, "C", None)}
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def compat_dist(tmp_path_factory):
    from dist_helpers import run_ranks

    tmp = tmp_path_factory.mktemp("compat_ddp")
    run_ranks(_compat_worker, WORLD, tmp, str(tmp))
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _rank_rows(r):
    return slice(r * N // WORLD, (r + 1) * N // WORLD)


def test_distributed_matches_lightlys_gather_semantics(compat_dist):
    """Per rank: lightly's value, and the embedding gradients its gathers give (W * dL/dz_r for
    every gathered term, so that DDP's average yields one process's gradient)."""
    z_a, z_b = (z.double() for z in make_views(N, D))
    for r, res in enumerate(compat_dist):
        rows = _rank_rows(r)

        # VICReg: local invariance + W * (global variance and covariance)
        def vicreg(a_r, b_r):
            a_all = torch.cat([a_r if s == r else z_a[_rank_rows(s)] for s in range(WORLD)])
            b_all = torch.cat([b_r if s == r else z_b[_rank_rows(s)] for s in range(WORLD)])
            local = ref_vicreg(a_r, b_r, mu_param=0.0, nu_param=0.0)
            glob = ref_vicreg(a_all, b_all, lambda_param=0.0)
            # value: local + global; gradient: local + W * global (all ranks' losses reach z_r)
            return local + glob + (WORLD - 1) * (glob - glob.detach())

        _assert_parity(res["vicreg"]["steps"][0], _value_and_grads(vicreg, z_a[rows], z_b[rows]))

        # Barlow Twins: the mean of the ranks' cross-correlations, each from its own normalisation
        def barlow(a_r, b_r):
            cs = [
                ref_barlow_c(a_r, b_r) if s == r else ref_barlow_c(z_a[_rank_rows(s)], z_b[_rank_rows(s)])
                for s in range(WORLD)
            ]
            loss = ref_barlow_from_c(sum(cs) / WORLD)
            return loss + (WORLD - 1) * (loss - loss.detach())

        _assert_parity(res["barlow"]["steps"][0], _value_and_grads(barlow, z_a[rows], z_b[rows]))

        # TiCo: everything on the gathered batch, C identical on every rank
        ref = RefTiCo()
        for step in range(2):

            def tico(a_r, b_r):
                a_all = torch.cat([a_r if s == r else z_a[_rank_rows(s)] for s in range(WORLD)])
                b_all = torch.cat([b_r if s == r else z_b[_rank_rows(s)] for s in range(WORLD)])
                loss = ref(a_all, b_all)
                return loss + (WORLD - 1) * (loss - loss.detach())

            _assert_parity(res["tico"]["steps"][step], _value_and_grads(tico, z_a[rows], z_b[rows]))
        assert_grad_close(res["tico"]["C"], ref.C)
    assert torch.equal(compat_dist[0]["tico"]["C"], compat_dist[1]["tico"]["C"])


@pytest.mark.parametrize("cls", [VICRegLoss, BarlowTwinsLoss, TiCoLoss], ids=lambda c: c.__name__)
def test_bfloat16_inputs_accumulate_in_float32(cls):
    # lightly would compute in bfloat16; the fused ops return a float32 loss and input-dtype gradients
    z_a, z_b = make_views(32, 48)
    a, b = z_a.bfloat16().requires_grad_(), z_b.bfloat16().requires_grad_()
    loss = cls()(a, b)
    loss.backward()
    assert loss.dtype == torch.float32 and a.grad.dtype == torch.bfloat16
    # the same bfloat16 values in float64: only float32 rounding remains
    exact = cls()(a.detach().double(), b.detach().double())
    assert_forward_close(loss, exact)
