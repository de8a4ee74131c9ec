"""SimCLR, MoCo v2, BYOL, SimSiam: losses against hand-written references,
stop-gradient, the key queue, momentum updates, split BN, error messages,
training smoke tests and exact resume of the stateful methods."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_train_e2e import _losses, tiny_cfg

from sslext import BYOLLoss, InfoNCELoss, KeyQueue, NTXentLoss, SimSiamLoss
from sslext.app.methods import build_method
from sslext.models import build_backbone
from sslext.models.momentum import check_momentum, cosine_momentum, ema_update_, momentum_copy
from sslext.models.split_bn import SplitBatchNorm2d, convert_split_bn
from sslext.optim import build_optimizer
from sslext.train import Trainer, load_checkpoint_file

torch.set_num_threads(2)


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(True)


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


# ----------------------------------------------------------------- references (loops, float64)


def ntxent_loop(z_a, z_b, t):
    z = torch.cat([z_a, z_b])
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    total = 0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        num = torch.exp(z[i] @ z[pos] / t)
        den = sum(torch.exp(z[i] @ z[j] / t) for j in range(n2) if j != i)
        total = total - torch.log(num / den)
    return total / n2


def infonce_loop(q, k, queue, t):
    q = q / q.norm(dim=1, keepdim=True)
    k = k / k.norm(dim=1, keepdim=True)
    total = 0
    for i in range(q.shape[0]):
        pos = torch.exp(q[i] @ k[i] / t)
        neg = sum(torch.exp(q[i] @ queue[j] / t) for j in range(queue.shape[0]))
        total = total - torch.log(pos / (pos + neg))
    return total / q.shape[0]


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 7, 0.2), (8, 4, 1.0)])
def test_ntxent_matches_loop_with_gradients(n, d, t):
    z_a, z_b = _rand(n, d, seed=1), _rand(n, d, seed=2)
    loss_fn = NTXentLoss(temperature=t)
    got = loss_fn(z_a, z_b)
    ref = ntxent_loop(z_a, z_b, t)
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)
    for g, r in zip(_grads(got, z_a, z_b), _grads(ref, z_a, z_b)):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)
    pos = F.cosine_similarity(z_a, z_b).mean()
    assert torch.allclose(loss_fn.last_terms["positive_cosine"], pos.detach())


def test_ntxent_default_temperature_and_float32():
    assert NTXentLoss().temperature == 0.5
    z_a, z_b = _rand(6, 5, seed=3), _rand(6, 5, seed=4)
    ref = ntxent_loop(z_a, z_b, 0.5)
    a32, b32 = z_a.detach().float().requires_grad_(), z_b.detach().float().requires_grad_()
    got = NTXentLoss()(a32, b32)
    assert got.dtype == torch.float32 and abs(got.item() - ref.item()) < 1e-5 * abs(ref.item())
    lo = NTXentLoss()(z_a.detach().bfloat16().requires_grad_(), z_b.detach().bfloat16())
    assert lo.dtype == torch.float32  # computed in float32 even for bf16 inputs


@pytest.mark.parametrize("n,k,d,t", [(1, 1, 3, 0.2), (4, 9, 5, 0.2), (6, 3, 8, 0.07)])
def test_infonce_matches_explicit_logits_with_queue(n, k, d, t):
    q, key = _rand(n, d, seed=5), _rand(n, d, seed=6)
    queue = F.normalize(_rand(k, d, seed=7).detach(), dim=1).requires_grad_(True)
    loss_fn = InfoNCELoss(temperature=t)
    got = loss_fn(q, key, queue)
    ref = infonce_loop(q, key, queue.detach(), t)
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)
    for g, r in zip(_grads(got, q, key), _grads(ref, q, key)):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)
    got2 = loss_fn(q, key, queue)
    got2.backward()
    assert queue.grad is None  # negatives never receive gradient


def test_infonce_default_temperature():
    assert InfoNCELoss().temperature == 0.2


def test_byol_loss_formula_and_stop_gradient():
    p_a, p_b, z_a, z_b = (_rand(5, 6, seed=s) for s in (10, 11, 12, 13))
    got = BYOLLoss()(p_a, p_b, z_a, z_b)

    def d(p, z):
        return (2 - 2 * (p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1))).mean()

    ref = d(p_a, z_b.detach()) + d(p_b, z_a.detach())
    assert torch.allclose(got, ref, rtol=1e-12)
    for g, r in zip(_grads(got, p_a, p_b), _grads(ref, p_a, p_b)):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)
    got = BYOLLoss()(p_a, p_b, z_a, z_b)
    got.backward()
    assert z_a.grad is None and z_b.grad is None and p_a.grad is not None
    same = torch.randn(4, 3)
    assert float(BYOLLoss()(same, same, 3 * same, 3 * same)) == pytest.approx(0.0, abs=1e-6)


def test_simsiam_loss_formula_and_stop_gradient():
    p_a, p_b, z_a, z_b = (_rand(7, 4, seed=s) for s in (20, 21, 22, 23))
    loss_fn = SimSiamLoss()
    got = loss_fn(p_a, p_b, z_a, z_b)
    ref = -(F.cosine_similarity(p_a, z_b.detach()).mean() + F.cosine_similarity(p_b, z_a.detach()).mean()) / 2
    assert torch.allclose(got, ref, rtol=1e-12)
    for g, r in zip(_grads(got, p_a, p_b), _grads(ref, p_a, p_b)):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-13)
    assert torch.allclose(loss_fn.last_terms["cosine"], -ref.detach())
    got = loss_fn(p_a, p_b, z_a, z_b)
    got.backward()
    assert z_a.grad is None and z_b.grad is None
    same = torch.randn(4, 3)
    assert float(loss_fn(same, same, same, same)) == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), True, "0.2"])
def test_bad_temperature(bad):
    for cls in (NTXentLoss, InfoNCELoss):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            cls(temperature=bad)


def test_bad_shapes_raise_clear_errors():
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"z_b must have the shape of z_a \(4, 8\)"):
        NTXentLoss()(a, torch.randn(4, 7))
    with pytest.raises(ValueError, match="z_a must have at least 2 rows"):
        NTXentLoss()(a[:1], b[:1])
    with pytest.raises(ValueError, match="z_a must be 2-D"):
        NTXentLoss()(a[0], b[0])
    with pytest.raises(TypeError, match="z_a must be a torch.Tensor"):
        NTXentLoss()(a.tolist(), b)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        NTXentLoss()(a.long(), b.long())
    with pytest.raises(ValueError, match="k must have the shape of q"):
        InfoNCELoss()(a, b[:3], torch.randn(5, 8))
    with pytest.raises(ValueError, match="queue must have 8 columns"):
        InfoNCELoss()(a, b, torch.randn(5, 7))
    with pytest.raises(ValueError, match="queue must be 2-D"):
        InfoNCELoss()(a, b, torch.randn(8))
    for cls in (BYOLLoss, SimSiamLoss):
        with pytest.raises(ValueError, match="z_b must have the shape of p_a"):
            cls()(a, b, a, torch.randn(3, 8))


# ----------------------------------------------------------------- key queue


def test_queue_fifo_and_pointer_wraparound():
    q = KeyQueue(5, 2)
    assert q.keys.shape == (5, 2) and int(q.ptr) == 0
    assert torch.allclose(q.keys.norm(dim=1), torch.ones(5))  # random unit vectors at start
    init = q.keys.clone()
    batches = [torch.full((2, 2), float(i + 1)) for i in range(3)]
    q.enqueue(batches[0])
    assert int(q.ptr) == 2 and torch.equal(q.keys[:2], batches[0]) and torch.equal(q.keys[2:], init[2:])
    q.enqueue(batches[1])
    assert int(q.ptr) == 4
    q.enqueue(batches[2])  # rows 4 and 0: wraps around, overwriting the oldest
    assert int(q.ptr) == 1
    assert q.keys[:, 0].tolist() == [3.0, 1.0, 2.0, 2.0, 3.0]
    q.enqueue(torch.full((5, 2), 9.0))  # a full-size batch replaces everything, pointer unchanged
    assert int(q.ptr) == 1 and bool((q.keys == 9).all())


def test_queue_state_dict_roundtrip_and_errors():
    q = KeyQueue(6, 3)
    q.enqueue(torch.randn(4, 3))
    sd = q.state_dict()
    assert set(sd) == {"keys", "ptr"}
    r = KeyQueue(6, 3)
    r.load_state_dict(sd)
    assert torch.equal(r.keys, q.keys) and int(r.ptr) == 4
    with pytest.raises(ValueError, match="cannot enqueue 7 keys into a queue of size 6"):
        q.enqueue(torch.randn(7, 3))
    with pytest.raises(ValueError, match="k must have 3 columns"):
        q.enqueue(torch.randn(2, 4))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="size must be a positive int"):
            KeyQueue(bad, 3)


# ----------------------------------------------------------------- momentum


def test_cosine_momentum_endpoints_and_shape():
    assert cosine_momentum(0.99, 1.0, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 1.0, 100, 100) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 1.0, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0, 500, 100) == pytest.approx(1.0)  # clamped past the end
    assert cosine_momentum(0.999, 0.999, 37, 100) == pytest.approx(0.999)  # constant
    vals = [cosine_momentum(0.9, 1.0, s, 20) for s in range(21)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="total_steps"):
        cosine_momentum(0.9, 1.0, 0, 0)


def test_ema_update_formula():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
    ema_update_(target, online, 0.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))
    with pytest.raises(ValueError, match="same parameters"):
        ema_update_(nn.Linear(3, 5), nn.Linear(3, 4), 0.5)


def test_check_momentum_errors():
    assert check_momentum(0.99, 1.0) == (0.99, 1.0)
    with pytest.raises(ValueError, match=r"method.final_momentum: expected >= method.momentum"):
        check_momentum(0.999, 0.99)
    with pytest.raises(ValueError, match=r"method.momentum: expected a number in \[0, 1\]"):
        check_momentum(1.5, 1.0)


# ----------------------------------------------------------------- split BN


def test_split_bn_matches_per_subbatch_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    sbn = convert_split_bn(nn.Sequential(bn), 4)[0]
    assert isinstance(sbn, SplitBatchNorm2d) and set(sbn.state_dict()) == set(bn.state_dict())
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    out = sbn(x)
    ref = torch.empty_like(x)
    means, vars_ = [], []
    for j in range(4):
        xs = x[j::4]  # interleaved sub-batch j
        rm, rv = torch.zeros(3), torch.ones(3)
        ref[j::4] = F.batch_norm(xs, rm, rv, sbn.weight, sbn.bias, True, 0.1, sbn.eps)
        means.append(rm)
        vars_.append(rv)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(sbn.running_mean, torch.stack(means).mean(0), atol=1e-6)
    assert torch.allclose(sbn.running_var, torch.stack(vars_).mean(0), atol=1e-6)
    assert int(sbn.num_batches_tracked) == 1
    sbn.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(sbn.state_dict())
    assert torch.allclose(sbn(x), plain(x))
    sbn.train()
    with pytest.raises(ValueError, match="method.bn_splits"):
        sbn(torch.randn(6, 3, 2, 2))


def test_split_bn_gradients_match():
    torch.manual_seed(1)
    sbn = SplitBatchNorm2d(2, 2)
    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    (sbn(x) ** 2 * torch.arange(4.0).view(4, 1, 1, 1)).sum().backward()
    gw, gx = sbn.weight.grad.clone(), x.grad.clone()
    x2 = x.detach().clone().requires_grad_(True)
    w = sbn.weight.detach().clone().requires_grad_(True)
    b = sbn.bias.detach().clone()
    parts = [F.batch_norm(x2[j::2], None, None, w, b, True, 0.0, sbn.eps) for j in range(2)]
    out = torch.stack([parts[i % 2][i // 2] for i in range(4)])
    (out**2 * torch.arange(4.0).view(4, 1, 1, 1)).sum().backward()
    assert torch.allclose(gw, w.grad, atol=1e-5) and torch.allclose(gx, x2.grad, atol=1e-5)


# ----------------------------------------------------------------- methods


def _tiny(name, **kw):
    torch.manual_seed(0)
    return build_method(name, build_backbone("resnet10", True, 8), **kw)


HEADS = {
    "simclr": dict(projector=[32, 16]),
    "mocov2": dict(projector=[32, 16], queue_size=40),
    "byol": dict(projector=[32, 16], predictor_hidden=16),
    "simsiam": dict(projector=[32, 32, 16], predictor_hidden=8),
}


def _views(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_method_step_exposes_what_the_trainer_needs(name):
    m = _tiny(name, **HEADS[name])
    loss, terms = m.training_step(_views())
    assert loss.ndim == 0 and torch.isfinite(loss) and terms
    assert all(not v.requires_grad for v in terms.values())
    assert m.last_outputs["feats"].shape == (8, m.feat_dim) and not m.last_outputs["feats"].requires_grad
    assert m.last_outputs["z"].shape[0] == 8 and isinstance(m.projector, nn.Module)
    loss.backward()
    assert all(p.grad is not None for n_, p in m.backbone.named_parameters())
    with pytest.raises(ValueError, match="views: expected a list of 2 batches"):
        m.training_step(_views()[:1])


@pytest.mark.parametrize(
    "name,prefixes",
    [("mocov2", ("key_backbone.", "key_projector.")), ("byol", ("target_backbone.", "target_projector."))],
)
def test_momentum_networks_get_no_gradient_and_are_not_optimised(name, prefixes):
    m = _tiny(name, **HEADS[name])
    opt = build_optimizer("lars", m, 0.1, 1e-4)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    tgt = [p for n_, p in m.named_parameters() if n_.startswith(prefixes)]
    online = [p for n_, p in m.named_parameters() if not n_.startswith(prefixes)]
    assert tgt and not any(id(p) in in_opt for p in tgt)
    assert all(id(p) in in_opt for p in online)
    assert any(k.startswith(prefixes[0]) for k in m.state_dict())
    loss, _ = m.training_step(_views())
    loss.backward()
    assert all(p.grad is None for p in tgt)


@pytest.mark.parametrize("name", ["mocov2", "byol"])
def test_after_optimizer_step_moves_target_by_the_schedule(name):
    m = _tiny(name, **HEADS[name], momentum=0.9, final_momentum=1.0)
    pre = "key_" if name == "mocov2" else "target_"
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    tgt = getattr(m, pre + "backbone")
    before = [p.clone() for p in tgt.parameters()]
    m.after_optimizer_step(5, 20)
    tau = cosine_momentum(0.9, 1.0, 5, 20)
    for t, b, o in zip(tgt.parameters(), before, m.backbone.parameters()):
        assert torch.allclose(t, tau * b + (1 - tau) * o)
    snap = [p.clone() for p in tgt.parameters()]
    m.after_optimizer_step(20, 20)  # tau = 1 at the end: the target stops moving
    assert all(torch.equal(a, b) for a, b in zip(snap, tgt.parameters()))


@pytest.mark.parametrize("symmetric", [True, False])
def test_moco_loss_uses_queue_before_enqueue(symmetric):
    m = _tiny("mocov2", projector=[32, 16], queue_size=40, symmetric=symmetric)
    x1, x2 = _views(seed=3)
    queue_before = m.queue.keys.clone()
    loss, _ = m.training_step([x1, x2])
    with torch.no_grad():
        q1, q2 = (m.projector(m.backbone(x)) for x in (x1, x2))
        k1, k2 = (F.normalize(m.key_projector(m.key_backbone(x)), dim=1) for x in (x1, x2))
        ref = InfoNCELoss(0.2)(q1, k2, queue_before)
        if symmetric:
            ref = (ref + InfoNCELoss(0.2)(q2, k1, queue_before)) / 2
    # keys of the current batch are not negatives of themselves
    assert torch.allclose(loss, ref, rtol=1e-5)
    new = torch.cat([k1, k2]) if symmetric else k2
    assert int(m.queue.ptr) == new.shape[0]
    assert torch.allclose(m.queue.keys[: new.shape[0]], new, atol=1e-6)
    assert torch.equal(m.queue.keys[new.shape[0] :], queue_before[new.shape[0] :])


def test_moco_split_bn_shuffle_is_undone():
    m = _tiny("mocov2", projector=[32, 16], queue_size=64, bn_splits=4)
    assert any(isinstance(x, SplitBatchNorm2d) for x in m.backbone.modules())
    assert any(isinstance(x, SplitBatchNorm2d) for x in m.key_backbone.modules())
    x = _views()[0]
    # In eval mode BN ignores the batch, so shuffled-then-unshuffled keys must
    # equal the keys of the unshuffled batch row for row.
    m.key_backbone.eval()
    k = m._keys(x)
    with torch.no_grad():
        ref = F.normalize(m.key_projector(m.key_backbone(x)), dim=1)
    assert torch.allclose(k, ref, atol=1e-6)
    m.key_backbone.train()
    loss, _ = m.training_step(_views())
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="method.bn_splits"):
        m.training_step(_views(n=6))


def test_moco_queue_too_small_is_a_clear_error():
    m = _tiny("mocov2", projector=[32, 16], queue_size=12)
    with pytest.raises(ValueError, match=r"method.queue_size: 12 is smaller than the 16 keys enqueued per step"):
        m.training_step(_views())
    m = _tiny("mocov2", projector=[32, 16], queue_size=12, symmetric=False)
    m.training_step(_views())  # 8 keys per step fit
    # MoCo v2's head: Linear(+bias)-ReLU-Linear, no BatchNorm
    assert [type(x) for x in m.projector] == [nn.Linear, nn.ReLU, nn.Linear] and m.projector[0].bias is not None


@pytest.mark.parametrize(
    "name,kw,match",
    [
        ("simclr", dict(temperature=0.0), "method.temperature must be a finite number > 0"),
        ("mocov2", dict(temperature=-1.0), "method.temperature must be a finite number > 0"),
        ("mocov2", dict(queue_size=0), "method.queue_size: expected a positive integer"),
        ("mocov2", dict(bn_splits=0), "method.bn_splits: expected a positive integer"),
        ("mocov2", dict(symmetric="yes"), "method.symmetric: expected true/false"),
        ("mocov2", dict(momentum=0.999, final_momentum=0.99), "method.final_momentum"),
        ("byol", dict(momentum=1.2), "method.momentum"),
        ("byol", dict(predictor_hidden=0), "method.predictor_hidden"),
        ("simsiam", dict(predictor_hidden=-3), "method.predictor_hidden"),
    ],
)
def test_bad_method_options(name, kw, match):
    with pytest.raises(ValueError, match=match):
        _tiny(name, **{**HEADS[name], **kw})


def test_bad_config_key_through_trainer(tmp_path):
    with pytest.raises(ValueError, match="method.queue_size"):
        Trainer(tiny_cfg(tmp_path, "mocov2", "method.queue_size=0"))


# ----------------------------------------------------------------- training (CPU, tiny)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_training_smoke(tmp_path, name):
    tr = Trainer(tiny_cfg(tmp_path, name, "train.max_steps=3", "eval.final=false"))
    before = {k: v.clone() for k, v in tr.method.state_dict().items()}
    s = tr.fit()
    assert s["global_step"] == 3
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    after = tr.method.state_dict()
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    if name == "mocov2":
        assert int(after["queue.ptr"]) == 3 * 64 % 96
        assert not torch.equal(before["key_backbone.conv1.weight"], after["key_backbone.conv1.weight"])
    if name == "byol":
        t, o = after["target_backbone.conv1.weight"], after["backbone.conv1.weight"]
        assert not torch.equal(before["target_backbone.conv1.weight"], t) and not torch.equal(t, o)


@pytest.mark.parametrize("name", ["mocov2", "byol"])
def test_resume_is_exact_for_momentum_methods(tmp_path, name):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    extra = ["train.epochs=2", "eval.final=false"]
    Trainer(tiny_cfg(ref_dir, name, *extra)).fit()
    s1 = Trainer(tiny_cfg(cut_dir, name, *extra, "train.max_steps=5")).fit()  # mid-epoch 0
    assert s1["global_step"] == 5 and not s1["finished"]
    s2 = Trainer(tiny_cfg(cut_dir, name, *extra), resume=True).fit()
    assert s2["finished"] and s2["global_step"] == 16
    assert _losses(ref_dir / "run") == _losses(cut_dir / "run")
    a = load_checkpoint_file(ref_dir / "run" / "last.pt")["method"]
    b = load_checkpoint_file(cut_dir / "run" / "last.pt")["method"]
    assert set(a) == set(b)
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    steps = [json.loads(l) for l in (cut_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == list(range(1, 17))


# ----------------------------------------------------------------- demo


@pytest.mark.parametrize("name", sorted(HEADS))
def test_demo_method_overrides_give_valid_configs(name):
    from sslext.app import demo
    from sslext.app.config import load_config

    cfg = load_config(demo.DEMO_CONFIG, demo.method_overrides(name))
    assert cfg["method"]["name"] == name and cfg["name"] == f"demo_fashion_mnist_{name}"
    assert cfg["data"]["dataset"] == "fashion_mnist" and cfg["model"]["backbone"] == "resnet10"
    torch.manual_seed(0)
    m = build_method(
        name, build_backbone("resnet10", True, 16), **{k: v for k, v in cfg["method"].items() if k != "name"}
    )
    assert m.projector is not None


def test_demo_unknown_method(capsys):
    from sslext.app import demo

    assert demo.main(["--method", "nope"]) == 2
    assert "--method" in capsys.readouterr().err
