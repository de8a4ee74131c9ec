"""The trainer on CUDA: a few steps of one method per family, in float32 and in
bf16 autocast, checkpoint + resume, probe and kNN on CUDA features, DDP over
one process with NCCL. Skipped without a GPU (conftest.py: marked cuda).

Sized for the few minutes of a lent GPU: ResNet-10 at width 8, 16 px crops,
batch 32, 3 steps per run. Each comparison states its tolerance and why.
"""

import json
import os
import tempfile

import pytest
import torch

from sslext.app.config import ConfigError, load_config
from sslext.train import Trainer, load_checkpoint_file

pytestmark = pytest.mark.cuda

TINY_CUDA = [
    "data.dataset=synthetic",
    "model.backbone=resnet10",
    "model.width=8",
    "optim.batch_size=32",
    "optim.warmup_epochs=1",
    "train.progress=false",
    "train.log_every=1",
    "eval.offline_epochs=3",
    "eval.knn_k=20",
    "eval.diag_samples=64",
    "augment.view1.crop_size=16",
    "augment.view2.crop_size=16",
    "name=run",
]

# One method per family, with the tiny heads of test_train_e2e.
FAMILIES = {
    "covariance": ("vicreg", ["method.projector=[32,32]"]),
    "contrastive": ("simclr", ["method.projector=[32,16]"]),
    "distillation": ("byol", ["method.projector=[32,16]", "method.predictor_hidden=32"]),
    "pretext": ("rotnet", ["method.head=[32]"]),
}


@pytest.fixture(autouse=True)
def _float32_convolutions():
    """TF32 off and deterministic cuDNN: float32 on the GPU is then float32 as on the CPU."""
    saved = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    ) = saved


def _bf16_setting() -> str:
    """The config's word for bf16 autocast: ``bf16`` where train.amp takes it, else ``true``."""
    try:
        load_config(None, ["train.amp=bf16"])
        return "bf16"
    except ConfigError:
        return "true"


def _cfg(out_dir, method, head, device, amp, *extra):
    return load_config(
        None,
        [
            f"method.name={method}",
            *head,
            *TINY_CUDA,
            f"train.device={device}",
            f"train.amp={amp}",
            f"train.out_dir={out_dir}",
            *extra,
        ],
    )


def _step_losses(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "step"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_float32_steps_match_the_cpu(tmp_path, family):
    method, head = FAMILIES[family]
    runs = {}
    for device in ("cpu", "cuda"):
        tr = Trainer(
            _cfg(
                tmp_path / device,
                method,
                head,
                device,
                "false",
                "train.max_steps=3",
                "eval.final=false",
                "train.channels_last=false",
            )
        )
        assert tr.device.type == device
        summary = tr.fit()
        assert summary["global_step"] == 3
        runs[device] = (
            _step_losses(tmp_path / device / "run"),
            {k: v.detach().cpu() for k, v in tr.method.state_dict().items()},
        )
    (l_cpu, _), (l_cuda, w_cuda) = runs["cpu"], runs["cuda"]
    # Step 1 sees the same weights and the same views (the augmentation
    # draws on a CPU generator): both sides compute in float32 (TF32 off) and
    # differ only in the order of their sums, ~1e-6 relative per layer over a
    # dozen layers, so 1e-4.
    assert l_cuda[0] == pytest.approx(l_cpu[0], rel=1e-4)
    # Steps 2-3 start from weights that already differ by that rounding,
    # amplified by LARS's per-layer trust ratios and the BatchNorm statistics of
    # 32 samples: 1e-2 separates "same trajectory" from a wrong kernel (a wrong
    # gradient changes the loss by far more after one step at lr 0.3).
    assert l_cuda[1:] == pytest.approx(l_cpu[1:], rel=1e-2)
    for k, v in w_cuda.items():
        assert torch.isfinite(v.float()).all(), k


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_bf16_autocast_steps(tmp_path, family):
    method, head = FAMILIES[family]
    ref = Trainer(_cfg(tmp_path / "f32", method, head, "cuda", "false", "train.max_steps=1", "eval.final=false"))
    ref.fit()
    tr = Trainer(
        _cfg(tmp_path / "bf16", method, head, "cuda", _bf16_setting(), "train.max_steps=3", "eval.final=false")
    )
    before = {k: v.detach().clone() for k, v in tr.method.state_dict().items()}
    tr.fit()
    losses = _step_losses(tmp_path / "bf16" / "run")
    assert len(losses) == 3 and all(map(lambda v: v == v and abs(v) < float("inf"), losses))
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per op);
    # through ~10 conv/BN layers the errors add up to ~1e-2 on the embeddings,
    # and the losses (computed in float32 from them) by as much: 5e-2 bounds
    # that and still fails a loss computed in bf16 or on wrong data.
    assert losses[0] == pytest.approx(_step_losses(tmp_path / "f32" / "run")[0], rel=5e-2)
    changed = [k for k, v in tr.method.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "three optimizer steps left every weight unchanged"
    for k, v in tr.method.state_dict().items():
        assert torch.isfinite(v.float()).all(), k


def test_cuda_checkpoint_resume_continues_exactly(tmp_path, monkeypatch):
    # Deterministic algorithms: the resumed run must repeat the same kernels
    # on the same inputs. CUBLAS_WORKSPACE_CONFIG is read when cuBLAS sets up
    # its workspace; an earlier test of this process may have done so already.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        method, head = FAMILIES["covariance"]
        full = Trainer(_cfg(tmp_path / "full", method, head, "cuda", "false", "train.max_steps=4", "eval.final=false"))
        full.fit()
        Trainer(_cfg(tmp_path / "cut", method, head, "cuda", "false", "train.max_steps=2", "eval.final=false")).fit()
        ck = load_checkpoint_file(tmp_path / "cut" / "run" / "last.pt")
        assert ck["global_step"] == 2 and ck["cuda_rng"]
        resumed = Trainer(
            _cfg(tmp_path / "cut", method, head, "cuda", "false", "train.max_steps=4", "eval.final=false"), resume=True
        )
        assert next(resumed.method.parameters()).device.type == "cuda"
        resumed.fit()
    finally:
        torch.use_deterministic_algorithms(False)
    # Same kernels, same inputs, deterministic algorithms: bit-identical is
    # expected; 1e-6 absolute only absorbs a cuBLAS workspace set up before
    # this test's CUBLAS_WORKSPACE_CONFIG (then a GEMM may split its sums differently).
    for k, v in full.method.state_dict().items():
        torch.testing.assert_close(resumed.method.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert _step_losses(tmp_path / "cut" / "run") == pytest.approx(_step_losses(tmp_path / "full" / "run"), rel=1e-5)


def test_cuda_features_probe_and_knn_match_the_cpu():
    from sslext.evaluate import extract_features, knn_accuracy, linear_probe
    from sslext.models import build_backbone

    torch.manual_seed(0)
    net = build_backbone("resnet10", True, 8)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (96, 3, 16, 16), dtype=torch.uint8, generator=g)
    f_cpu, _ = extract_features(net, images, 32, "cpu", 16)
    f_cuda, _ = extract_features(net.cuda(), images, 32, "cuda", 16)
    # float32 on both (TF32 off): sums in another order, 1e-4 relative.
    torch.testing.assert_close(f_cuda, f_cpu, rtol=1e-4, atol=1e-5)
    # Well-separated classes: the accuracies do not hinge on rounding, so the
    # CUDA path must give the CPU's numbers (kNN exactly; the probe, trained
    # by AdamW on another device, within one test sample).
    centers = torch.randn(4, 16, generator=g) * 4
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 16, generator=g)
    tr_x, te_x, tr_y, te_y = x[:150], x[150:], y[:150], y[150:]
    knn_cpu = knn_accuracy(tr_x, tr_y, te_x, te_y, k=10)
    knn_cuda = knn_accuracy(tr_x.cuda(), tr_y.cuda(), te_x.cuda(), te_y.cuda(), k=10)
    assert knn_cuda == knn_cpu
    lp_cpu = linear_probe(tr_x, tr_y, te_x, te_y, epochs=20)["test_acc"]
    lp_cuda = linear_probe(tr_x.cuda(), tr_y.cuda(), te_x.cuda(), te_y, epochs=20)["test_acc"]
    assert abs(lp_cuda - lp_cpu) <= 100 / 50 + 1e-9


def test_cuda_trainer_epoch_eval_and_final_eval(tmp_path):
    """The online probe, kNN and the offline probe of a finished run, all on the GPU path."""
    method, head = FAMILIES["covariance"]
    summary = Trainer(_cfg(tmp_path, method, head, "cuda", "false", "train.epochs=1")).fit()
    assert summary["finished"]
    fe = summary["final_eval"]
    for k in ("linear_acc", "knn_acc"):
        assert 0 <= fe[k] <= 100
    epoch = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"kind": "epoch"' in line
    ][-1]
    assert 0 <= epoch["knn_acc"] <= 100 and 0 <= epoch["online_probe_acc"] <= 100


def test_cuda_ddp_one_process_nccl_matches_plain(tmp_path):
    import torch.distributed as dist

    from sslext.app.methods import build_method
    from sslext.distributed import wrap_ddp
    from sslext.models import build_backbone

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    init = tempfile.NamedTemporaryFile(dir=tmp_path, delete=False).name
    os.unlink(init)
    dist.init_process_group(
        "nccl",
        init_method=f"file://{init}",
        rank=0,
        world_size=1,
        device_id=torch.device("cuda", torch.cuda.current_device()),
    )
    try:

        def grads(ddp):
            torch.manual_seed(0)
            m = build_method("vicreg", build_backbone("resnet10", True, 8), projector=[32, 32]).cuda()
            model = wrap_ddp(m, torch.device("cuda")) if ddp else m
            g = torch.Generator().manual_seed(2)
            x = torch.randn(2, 16, 3, 16, 16, generator=g).cuda()
            loss, _ = model([x[0], x[1]])
            loss.backward()
            return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

        l_plain, g_plain = grads(False)
        l_ddp, g_ddp = grads(True)
        # One rank: DDP's all-reduce averages one gradient (divides by 1) and
        # the loss gathers one batch; only the bucket copies differ from the
        # plain run, and they are exact. 1e-6 relative allows for a different
        # cuDNN algorithm choice between the two runs' first convolutions.
        torch.testing.assert_close(l_ddp, l_plain, rtol=1e-6, atol=0)
        for n, gp in g_plain.items():
            torch.testing.assert_close(g_ddp[n], gp, rtol=1e-5, atol=1e-7, msg=n)
        # The trainer under an outer NCCL group of one process trains as it does alone.
        method, head = FAMILIES["covariance"]
        summary = Trainer(
            _cfg(tmp_path / "run", method, head, "cuda", "false", "train.max_steps=2", "eval.final=false")
        ).fit()
        assert summary["global_step"] == 2
    finally:
        dist.destroy_process_group()
