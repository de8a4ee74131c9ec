"""The loss modules used as a new user would, in a plain PyTorch loop: nothing a
user does by mistake poisons the running covariance, casts it, changes it
behind their back, or fails without saying what to do."""

import math
import warnings

import pytest
import torch
from docs_check import REPO, extract_blocks
from test_losses import make_views

import sslext
from sslext.compat import lightly as compat

RUNNING_COV = [sslext.TiCoLoss, sslext.VICRegTiCoLoss]
# (N, D, strategy): the Gram path (C_new never formed, updated by a separate
# GEMM) and the covariance path (C_new formed by the op). VICReg-TiCo's Gram
# path needs 2N < D.
PATHS = [(6, 16, "gram"), (24, 8, "covariance")]


def _poison(z: torch.Tensor, value: float) -> torch.Tensor:
    z = z.clone()
    z[1, 2] = value
    return z


# --------------------------------------------------- non-finite batches and C
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("path", PATHS, ids=[p[2] for p in PATHS])
@pytest.mark.parametrize("cls", RUNNING_COV)
def test_nonfinite_batch_never_enters_c(cls, path, bad):
    n, d, strategy = path
    loss_fn, clean_only = cls(strategy=strategy), cls(strategy=strategy)
    batches = [make_views(n, d, seed=s) for s in range(3)]
    loss_fn(*batches[0])
    clean_only(*batches[0])
    c_before = loss_fn.C.clone()

    z_a, z_b = batches[1]
    with pytest.warns(RuntimeWarning, match=r"non-finite.*C was left unchanged \(1 update\(s\) skipped"):
        bad_loss = loss_fn(_poison(z_a, bad), z_b)
    assert not torch.isfinite(bad_loss)  # the loss says so; the user skips the step
    assert torch.equal(loss_fn.C, c_before)
    assert int(loss_fn.skipped_updates) == 1
    assert "skipped_updates" not in loss_fn.state_dict()  # checkpoints keep their keys

    # The next clean batch trains as if the bad one never came.
    for z_a, z_b in batches[1:]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = loss_fn(z_a, z_b)
        want = clean_only(z_a, z_b)
        assert torch.isfinite(got)
        assert torch.equal(got, want)
        assert torch.equal(loss_fn.C, clean_only.C)
    assert int(loss_fn.skipped_updates) == 1
    loss_fn.reset_covariance()
    assert int(loss_fn.skipped_updates) == 0 and not loss_fn.C.any()


def test_nonfinite_batch_skipped_under_compile_without_sync():
    """Compiled, the update is a torch.where (no data-dependent branch): counted, no warning."""
    torch._dynamo.reset()
    loss_fn = sslext.TiCoLoss(dim=16)
    compiled = torch.compile(loss_fn, fullgraph=True)
    z_a, z_b = make_views(6, 16)
    compiled(z_a, z_b)
    c_before = loss_fn.C.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        compiled(_poison(z_a, math.nan), z_b)
    assert torch.equal(loss_fn.C, c_before)
    assert int(loss_fn.skipped_updates) == 1


# ------------------------------------------------------------------ dtype of C
CASTS = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.bfloat16(),
    "to_float16": lambda m: m.to(torch.float16),
    "to_meta_bfloat16": lambda m: m.to("meta", torch.bfloat16),
}


@pytest.mark.parametrize("cast", list(CASTS))
@pytest.mark.parametrize("cls", RUNNING_COV + [compat.TiCoLoss])
def test_c_keeps_its_dtype_through_a_parent_cast(cls, cast):
    loss_fn = cls()
    model = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 16), "loss": loss_fn})
    z_a, z_b = make_views(8, 16)
    loss_fn(z_a, z_b)
    c_before = loss_fn.C.clone()
    CASTS[cast](model)
    assert model["proj"].weight.dtype != torch.float32  # the parent was cast
    assert loss_fn.C.dtype == torch.float32
    if cast.startswith("to_meta"):
        assert loss_fn.C.device.type == "meta"  # device moves still apply
        return
    assert torch.equal(loss_fn.C, c_before)  # not rounded through half precision
    # the next call, with half-precision embeddings, works
    x = torch.randn(8, 4, dtype=model["proj"].weight.dtype)
    z = model["proj"](x)
    assert torch.isfinite(loss_fn(z, z + 0.1))
    assert loss_fn.C.dtype == torch.float32


@pytest.mark.parametrize("cls", RUNNING_COV)
def test_c_follows_double_and_unallocated_c_stays_float32(cls):
    loss_fn = cls(dim=16).double()
    assert loss_fn.C.dtype == torch.float64  # float64 is a dtype C can accumulate in
    z_a, z_b = make_views(8, 16, dtype=torch.float64)
    assert torch.isfinite(loss_fn(z_a, z_b))
    lazy = cls().half()
    lazy(*make_views(8, 16))
    assert lazy.C.dtype == torch.float32


# ------------------------------------------------------ updates and the mode
@pytest.mark.parametrize("cls", RUNNING_COV)
def test_c_updated_in_training_mode_only_by_default(cls):
    z_a, z_b = make_views(8, 16)
    loss_fn = cls(dim=16)
    loss_fn.eval()
    with torch.no_grad():
        loss_fn(z_a, z_b)  # a validation loop
    assert not loss_fn.C.any()
    loss_fn(z_a, z_b, update=True)  # asked for explicitly: updates in eval mode too
    c_one = loss_fn.C.clone()
    assert c_one.any()
    loss_fn.train()
    loss_fn(z_a, z_b, update=False)
    assert torch.equal(loss_fn.C, c_one)
    loss_fn(z_a, z_b)
    assert not torch.equal(loss_fn.C, c_one)

    always = cls(dim=16, update_in_eval=True).eval()
    with torch.no_grad():
        always(z_a, z_b)
    torch.testing.assert_close(always.C, c_one, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"update_in_eval must be True or False, got 1"):
        cls(update_in_eval=1)
    with pytest.raises(TypeError, match=r"update must be True or False, got 'yes'"):
        loss_fn(z_a, z_b, update="yes")


def test_compat_tico_updates_in_eval_mode_as_lightly():
    loss_fn = compat.TiCoLoss().eval()
    z_a, z_b = make_views(8, 16)
    with torch.no_grad():
        loss_fn(z_a, z_b)
    assert loss_fn.C.any()


# -------------------------------------------------------- constructor checks
BAD_ARGUMENTS = [
    (sslext.TiCoLoss, {"rho": math.nan}, ValueError, r"rho must be finite, got nan"),
    (sslext.TiCoLoss, {"rho": -1.0}, ValueError, r"rho must be >= 0, got -1.0"),
    (sslext.TiCoLoss, {"rho": "8"}, TypeError, r"rho must be a real number, got '8'"),
    (sslext.TiCoLoss, {"beta": None}, TypeError, r"beta must be a real number, got None"),
    (sslext.TiCoLoss, {"beta": 1.5}, ValueError, r"beta must be in \[0, 1\], got 1.5"),
    (sslext.TiCoLoss, {"dim": 0}, ValueError, r"dim must be a positive int or None, got 0"),
    (sslext.TiCoLoss, {"strategy": "fast"}, ValueError, r"strategy must be one of"),
    (sslext.VICRegLoss, {"inv_coeff": math.nan}, ValueError, r"inv_coeff must be finite, got nan"),
    (sslext.VICRegLoss, {"inv_coeff": None}, TypeError, r"inv_coeff must be a real number, got None"),
    (sslext.VICRegLoss, {"var_coeff": math.inf}, ValueError, r"var_coeff must be finite, got inf"),
    (sslext.VICRegLoss, {"cov_coeff": -1}, ValueError, r"cov_coeff must be >= 0, got -1.0"),
    (sslext.VICRegLoss, {"eps": True}, TypeError, r"eps must be a real number, got True"),
    (sslext.VICRegLoss, {"eps": -1e-4}, ValueError, r"eps must be >= 0"),
    (sslext.BarlowTwinsLoss, {"lambd": -1}, ValueError, r"lambd must be >= 0, got -1.0"),
    (sslext.BarlowTwinsLoss, {"lambd": math.nan}, ValueError, r"lambd must be finite"),
    (sslext.BarlowTwinsLoss, {"eps": "1e-5"}, TypeError, r"eps must be a real number"),
    (sslext.VICRegTiCoLoss, {"cov_coeff": math.nan}, ValueError, r"cov_coeff must be finite"),
    (sslext.VICRegTiCoLoss, {"beta": -0.1}, ValueError, r"beta must be in \[0, 1\]"),
    (sslext.VICRegTiCoLoss, {"variant": None}, ValueError, r"variant must be one of"),
    (sslext.VICRegTiCoLoss, {"gather_distributed": 1}, ValueError, r"gather_distributed must be None"),
]


@pytest.mark.parametrize(
    "cls,kwargs,exc,match",
    BAD_ARGUMENTS,
    ids=[f"{c.__name__}-{next(iter(k))}={next(iter(k.values()))!r}" for c, k, _, _ in BAD_ARGUMENTS],
)
def test_bad_constructor_argument_named(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(**kwargs)


def test_native_and_compat_messages_agree():
    for native, lightly_style in (
        (lambda: sslext.TiCoLoss(rho=math.nan), lambda: compat.TiCoLoss(rho=math.nan)),
        (lambda: sslext.TiCoLoss(rho=None), lambda: compat.TiCoLoss(rho=None)),
    ):
        with pytest.raises((TypeError, ValueError)) as a:
            native()
        with pytest.raises((TypeError, ValueError)) as b:
            lightly_style()
        assert type(a.value) is type(b.value) and str(a.value) == str(b.value)


def test_numpy_and_int_arguments_accepted():
    np = pytest.importorskip("numpy")
    loss_fn = sslext.VICRegLoss(inv_coeff=np.float32(25), var_coeff=25, cov_coeff=np.float64(1.0))
    assert (loss_fn.inv_coeff, loss_fn.var_coeff, loss_fn.cov_coeff) == (25.0, 25.0, 1.0)
    assert all(type(v) is float for v in (loss_fn.inv_coeff, loss_fn.var_coeff, loss_fn.cov_coeff))


# -------------------------------------------- unequal batch sizes across ranks
def test_unequal_batch_sizes_across_ranks_raise_naming_the_sizes(tmp_path):
    """Before the fix gloo aborted the process (SIGABRT); now every rank gets a ValueError."""
    from dist_helpers import run_ranks, unequal_batch_worker

    run_ranks(unequal_batch_worker, 2, tmp_path, str(tmp_path), timeout=120.0)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert per_rank[0] == per_rank[1]  # the same error on every rank
    errors = per_rank[0]
    assert errors.pop("after") == "(4, 3)"  # the group survives the refused call
    assert errors.pop("all_reduce_with_grad") == (
        "all_reduce_with_grad: every rank must pass the same shape (equal batch sizes: drop the last "
        "incomplete batch, e.g. DataLoader(drop_last=True)); got rank 0: (16, 16), rank 1: (17, 17)"
    )
    for name, message in errors.items():
        assert "rank 0: (8, 16), rank 1: (6, 16)" in message, (name, message)
    assert errors["TiCoLoss"].startswith("TiCoLoss: z_a and z_b: every rank must pass the same shape")


# ------------------------------------------------- another embedding size
@pytest.mark.parametrize("cls", RUNNING_COV)
def test_changed_embedding_size_says_how_to_reset(cls):
    loss_fn = cls()
    loss_fn(*make_views(8, 16))
    z_a, z_b = make_views(8, 12)
    with pytest.raises(
        ValueError,
        match=r"embedding dim 12 .* C is \(16, 16\).*"
        r"loss_fn\.reset_covariance\(dim=12\)",
    ):
        loss_fn(z_a, z_b)
    loss_fn.reset_covariance(dim=12)
    assert loss_fn.C.shape == (12, 12) and not loss_fn.C.any()
    assert torch.isfinite(loss_fn(z_a, z_b))
    with pytest.raises(ValueError, match=r"dim must be a positive int or None, got -3"):
        loss_fn.reset_covariance(dim=-3)


# ------------------------------------------------------------ state dicts
@pytest.mark.parametrize("cls", RUNNING_COV)
def test_state_dict_before_first_call_loads_into_sized_module(cls):
    z_a, z_b = make_views(8, 16)
    early = cls().state_dict()  # C not allocated yet
    assert early["C"].numel() == 0
    sized = cls(dim=16)
    sized.load_state_dict(early)  # strict
    assert sized.C.shape == (16, 16) and not sized.C.any()
    torch.testing.assert_close(sized(z_a, z_b), cls(dim=16)(z_a, z_b), rtol=0, atol=0)

    # the reverse: a sized module saved before its first call, loaded into an unsized one
    lazy = cls()
    lazy.load_state_dict(cls(dim=16).state_dict())
    assert lazy.C.shape == (16, 16) and lazy.C.dtype == torch.float32 and not lazy.C.any()
    # and a lazy module saved before its first call into another lazy one stays lazy
    still_lazy = cls()
    still_lazy.load_state_dict(early)
    assert still_lazy.C.numel() == 0
    still_lazy(z_a, z_b)
    assert still_lazy.C.shape == (16, 16)


def test_checkpoint_with_half_c_loads_as_float32():
    """A state_dict written by an older version after model.half() (C in float16)."""
    saved = {"C": torch.eye(16, dtype=torch.float16)}
    lazy = sslext.TiCoLoss()
    lazy.load_state_dict(saved)
    assert lazy.C.dtype == torch.float32 and torch.equal(lazy.C, torch.eye(16))


# --------------------------------------------------------- documentation
def test_readme_loss_examples_raise_no_warning():
    """README's "Use a loss" blocks run clean: a user copying them sees no torch warning."""
    blocks = [
        b
        for b in extract_blocks(REPO / "README.md")
        if b.language == "python" and "sslext" in b.code and "Loss" in b.code
    ]
    assert blocks
    for block in blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exec(compile(block.code, block.where, "exec"), {"__name__": "__readme__", "print": lambda *a: None})
