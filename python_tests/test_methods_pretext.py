"""Pretext-task methods (RotNet, Jigsaw, CPC): building blocks against
explicit references, argument errors, training smoke tests and resume."""

import json
import math

import pytest
import torch
import torch.nn as nn
from test_train_e2e import tiny_cfg

from sslext.app.methods import build_method
from sslext.models import build_backbone
from sslext.pretext import (
    ContextNetwork,
    bn_stats_frozen,
    cpc_infonce,
    hamming_permutations,
    jigsaw_tiles,
    min_hamming_distance,
    normalize_tiles,
    patch_grid,
    rotation_batch,
)
from sslext.train import Trainer, load_checkpoint_file


def _tiny_backbone():
    torch.manual_seed(0)
    return build_backbone("resnet10", True, 8)


# ------------------------------------------------------------------ RotNet
def test_rotation_batch_exact_rot90_and_labels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    imgs, labels = rotation_batch(x)
    assert imgs.shape == (8, 3, 4, 4)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    s = 4
    for n in range(2):
        for k in range(4):
            out = imgs[k * 2 + n]
            # k counter-clockwise quarter turns, written out index by index
            for i in range(s):
                for j in range(s):
                    src = {0: (i, j), 1: (j, s - 1 - i), 2: (s - 1 - i, s - 1 - j), 3: (s - 1 - j, i)}[k]
                    assert torch.equal(out[:, i, j], x[n, :, src[0], src[1]]), (n, k, i, j)


def test_rotation_batch_errors():
    with pytest.raises(ValueError, match="square"):
        rotation_batch(torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="images"):
        rotation_batch(torch.zeros(3, 4, 4))


# ------------------------------------------------------------------ Jigsaw
def _brute_min_hamming(perms):
    best = math.inf
    rows = perms.tolist()
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            best = min(best, sum(u != v for u, v in zip(rows[a], rows[b])))
    return best


def test_hamming_permutations_distinct_with_claimed_distance():
    perms = hamming_permutations(100, 3, seed=0)
    assert perms.shape == (100, 9) and perms.dtype == torch.long
    assert all(sorted(r) == list(range(9)) for r in perms.tolist())
    assert len({tuple(r) for r in perms.tolist()}) == 100
    claimed = min_hamming_distance(perms)
    assert claimed == _brute_min_hamming(perms)
    # greedy max-min over 9! gives 100 permutations at least 6 moves apart
    assert claimed >= 6
    assert torch.equal(perms, hamming_permutations(100, 3, seed=0))  # deterministic given the seed
    assert not torch.equal(perms, hamming_permutations(100, 3, seed=1))
    # all 24 permutations of a 2x2 grid are reachable; any two differ in >= 2 positions
    p2 = hamming_permutations(24, 2, seed=3)
    assert len({tuple(r) for r in p2.tolist()}) == 24 and min_hamming_distance(p2) == 2


def test_hamming_permutations_errors():
    with pytest.raises(ValueError, match="num_permutations: a 2x2 grid has only 24"):
        hamming_permutations(25, 2)
    with pytest.raises(ValueError, match="num_permutations"):
        hamming_permutations(0, 3)
    with pytest.raises(ValueError, match="grid: expected 2 or 3"):
        hamming_permutations(10, 4)
    with pytest.raises(ValueError, match="grid"):
        hamming_permutations(10, 1)


def test_jigsaw_tiles_reassemble_without_jitter():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    perms = hamming_permutations(10, 3, seed=0)
    g = torch.Generator().manual_seed(1)
    tiles, labels = jigsaw_tiles(x, perms, 3, tile_ratio=1.0, generator=g)
    assert tiles.shape == (4, 9, 3, 10, 10) and labels.shape == (4,)
    for n in range(4):
        order = perms[labels[n]]
        orig = torch.empty_like(tiles[n])
        orig[order] = tiles[n]  # shuffled position i holds original tile order[i]
        grid = orig.view(3, 3, 3, 10, 10).permute(2, 0, 3, 1, 4).reshape(3, 30, 30)
        assert torch.equal(grid, x[n, :, 1:31, 1:31])  # central 30x30 square


def test_jigsaw_tiles_jitter_offsets_and_labels():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 28, 28)  # cells of 9 px, tiles of round(6.75) = 7 px
    perms = hamming_permutations(5, 3, seed=0)
    labels = torch.tensor([4, 0, 2])
    off = torch.randint(0, 3, (3, 9, 2))
    tiles, lab = jigsaw_tiles(x, perms, 3, 0.75, labels=labels, offsets=off)
    assert tiles.shape == (3, 9, 3, 7, 7) and torch.equal(lab, labels)
    for n in range(3):
        for i in range(9):
            src = int(perms[labels[n], i])
            y0 = 0 + (src // 3) * 9 + int(off[n, src, 0])
            x0 = 0 + (src % 3) * 9 + int(off[n, src, 1])
            assert torch.equal(tiles[n, i], x[n, :, y0 : y0 + 7, x0 : x0 + 7]), (n, i)
    # random draws stay inside the cells (offsets in [0, 2]) and use the set's indices
    t2, l2 = jigsaw_tiles(x, perms, 3, 0.75, generator=torch.Generator().manual_seed(5))
    assert t2.shape == tiles.shape and int(l2.min()) >= 0 and int(l2.max()) < 5


def test_jigsaw_tiles_errors():
    perms = hamming_permutations(5, 3)
    with pytest.raises(ValueError, match="too small for a 3x3 jigsaw grid"):
        jigsaw_tiles(torch.zeros(1, 3, 5, 5), perms, 3)
    with pytest.raises(ValueError, match="perms"):
        jigsaw_tiles(torch.zeros(1, 3, 16, 16), hamming_permutations(5, 2), 3)
    with pytest.raises(ValueError, match="tile_ratio"):
        jigsaw_tiles(torch.zeros(1, 3, 16, 16), perms, 3, tile_ratio=1.5)
    with pytest.raises(ValueError, match="labels"):
        jigsaw_tiles(torch.zeros(2, 3, 16, 16), perms, 3, labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="offsets"):
        jigsaw_tiles(torch.zeros(1, 3, 16, 16), perms, 3, offsets=torch.full((1, 9, 2), 3))


def test_normalize_tiles_per_tile():
    t = torch.randn(5, 3, 4, 4) * 3 + 2
    t[1] = 7.0  # flat tile stays finite (zero after centring)
    y = normalize_tiles(t)
    assert torch.allclose(y.mean((1, 2, 3)), torch.zeros(5), atol=1e-5)
    assert torch.equal(y[1], torch.zeros(3, 4, 4))
    assert torch.allclose(y[[0, 2, 3, 4]].std((1, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)


# ------------------------------------------------------------------ CPC
def test_patch_grid_positions():
    x = torch.randn(2, 3, 16, 16)
    p = patch_grid(x, 8, 4)
    assert p.shape == (2, 3, 3, 3, 8, 8)
    for r in range(3):
        for c in range(3):
            assert torch.equal(p[:, r, c], x[:, :, 4 * r : 4 * r + 8, 4 * c : 4 * c + 8])
    assert patch_grid(torch.zeros(1, 3, 32, 32), 8, 4).shape[1:3] == (7, 7)
    with pytest.raises(ValueError, match="patch_size: 20 is larger"):
        patch_grid(x, 20, 4)


def _cpc_reference(z, c, weights):
    """InfoNCE with explicit loops over steps, query positions and negatives."""
    n, d, gh, gw = z.shape
    keys = [(m, r, q) for m in range(n) for r in range(gh) for q in range(gw)]
    per_k = []
    for k, w in enumerate(weights, start=1):
        terms = []
        for m in range(n):
            for r in range(gh - k):
                for q in range(gw):
                    pred = w @ c[m, :, r, q]
                    scores = torch.stack([pred @ z[a, :, b, e] for (a, b, e) in keys])
                    pos = keys.index((m, r + k, q))
                    terms.append(torch.logsumexp(scores, 0) - scores[pos])
        per_k.append(torch.stack(terms).mean())
    return torch.stack(per_k).mean()


def test_cpc_infonce_matches_loop_reference_with_grads():
    torch.manual_seed(0)
    n, d, dc, g, steps = 2, 3, 4, 3, 2
    z = torch.randn(n, d, g, g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(n, dc, g, g, dtype=torch.float64, requires_grad=True)
    preds = nn.ModuleList(nn.Linear(dc, d, bias=False).double() for _ in range(steps))
    loss, acc = cpc_infonce(z, c, preds)
    ref = _cpc_reference(z, c, [p.weight for p in preds])
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=0)
    params = [z, c, *[p.weight for p in preds]]
    g1 = torch.autograd.grad(loss, params)
    g2 = torch.autograd.grad(ref, params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert 0.0 <= float(acc) <= 1.0


def test_cpc_infonce_rejects_bad_steps():
    z = torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="steps: expected 1 <= steps < 3"):
        cpc_infonce(z, z, [nn.Linear(3, 3)] * 3)
    with pytest.raises(ValueError, match="z/context"):
        cpc_infonce(z, torch.randn(2, 3, 4, 3), [nn.Linear(3, 3)])


def test_context_network_is_row_causal():
    torch.manual_seed(0)
    net = ContextNetwork(5, 6, context_layers=2, context_kernel=3)
    z = torch.randn(2, 5, 7, 7)
    c = net(z)
    assert c.shape == (2, 6, 7, 7)
    for r in range(6):
        z2 = z.clone()
        z2[:, :, r + 1 :] += torch.randn_like(z2[:, :, r + 1 :])
        c2 = net(z2)
        assert torch.equal(c2[:, :, : r + 1], c[:, :, : r + 1]), r  # rows <= r blind to rows > r
        assert not torch.equal(c2[:, :, r + 1 :], c[:, :, r + 1 :])
    # and it does look up: row 6 depends on row 0 through the stacked kernels
    z3 = z.clone()
    z3[:, :, 0] += 1.0
    assert not torch.equal(net(z3)[:, :, 4], c[:, :, 4])
    with pytest.raises(ValueError, match="context_kernel: expected an odd int"):
        ContextNetwork(5, 6, context_kernel=2)


def test_bn_stats_frozen_keeps_running_stats():
    bb = _tiny_backbone()
    bb.train()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with bn_stats_frozen(bb):
        bb(torch.randn(8, 3, 8, 8))
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k
    bb(torch.randn(8, 3, 8, 8))
    assert not torch.equal(bb.bn1.running_mean, before["bn1.running_mean"])
    assert all(m.track_running_stats for m in bb.modules() if isinstance(m, nn.BatchNorm2d))


# ------------------------------------------------------------------ methods
@pytest.mark.parametrize(
    "bad,match",
    [
        (("rotnet", {"head": [0]}), "method.head"),
        (("jigsaw", {"num_permutations": 1000, "grid": 2}), "method.num_permutations"),
        (("jigsaw", {"grid": 5}), "method.grid"),
        (("jigsaw", {"tile_ratio": 0.0}), "method.tile_ratio"),
        (("jigsaw", {"normalize_tiles": "yes"}), "method.normalize_tiles"),
        (("cpc", {"steps": 0}), "method.steps"),
        (("cpc", {"context_kernel": 4}), "method.context_kernel"),
        (("cpc", {"context_dim": -1}), "method.context_dim"),
    ],
)
def test_method_bad_arguments(bad, match):
    name, kw = bad
    with pytest.raises(ValueError, match=match):
        build_method(name, _tiny_backbone(), **kw)


def test_methods_reject_wrong_view_count_and_small_crops():
    x = torch.randn(4, 3, 16, 16)
    for name in ("rotnet", "jigsaw", "cpc"):
        m = build_method(name, _tiny_backbone())
        assert m.num_views == 1 and m.projector is None
        with pytest.raises(ValueError, match="views: expected a list of 1 batch"):
            m.training_step([x, x])
    cpc = build_method("cpc", _tiny_backbone())  # steps=3 but 16 px -> 3 patch rows
    with pytest.raises(ValueError, match="method.steps: expected < 3"):
        cpc.training_step([x])
    with pytest.raises(ValueError, match="method.patch_size"):
        cpc.training_step([torch.randn(2, 3, 6, 6)])
    jig = build_method("jigsaw", _tiny_backbone(), num_permutations=4)
    with pytest.raises(ValueError, match="crop_size.*too small"):
        jig.training_step([torch.randn(2, 3, 5, 5)])


def test_jigsaw_permutations_are_a_checkpointed_buffer():
    m = build_method("jigsaw", _tiny_backbone(), num_permutations=20, permutation_seed=3)
    sd = m.state_dict()
    assert torch.equal(sd["permutations"], hamming_permutations(20, 3, seed=3))
    assert m.min_hamming == min_hamming_distance(sd["permutations"])
    other = build_method("jigsaw", _tiny_backbone(), num_permutations=20, permutation_seed=4)
    other.load_state_dict(sd)
    assert torch.equal(other.permutations, sd["permutations"])


@pytest.mark.parametrize(
    "name,kw,size",
    [
        ("rotnet", {"head": [32]}, 16),
        ("jigsaw", {"num_permutations": 8, "tile_dim": 16, "hidden": [32]}, 32),
        ("cpc", {"steps": 2, "context_dim": 16, "context_layers": 1}, 16),
    ],
)
def test_methods_learn_on_a_fixed_batch(name, kw, size):
    """Smoke test: a few optimiser steps on one batch lower the pretext loss,
    and the online-probe features are whole-image backbone features."""
    torch.set_num_threads(2)
    m = build_method(name, _tiny_backbone(), **kw)
    x = torch.randn(8, 3, size, size)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        state = torch.get_rng_state()
        torch.manual_seed(2)  # jigsaw: same puzzles every step, so the loss is comparable
        loss, terms = m.training_step([x])
        torch.set_rng_state(state)
        assert set(terms) == {"pretext_acc"} and 0 <= float(terms["pretext_acc"]) <= 1
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.5 * losses[0], losses
    feats = m.last_outputs["feats"]
    assert feats.shape == (8, m.feat_dim) and not feats.requires_grad


def test_trainer_uses_one_view_for_pretext(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, "rotnet", "train.epochs=1", "eval.final=false"))
    assert len(tr.augment.views) == 1
    tr2 = Trainer(tiny_cfg(tmp_path / "b", "vicreg", "train.epochs=1", "eval.final=false"))
    assert len(tr2.augment.views) == 2


def test_resume_is_exact_jigsaw(tmp_path):
    """Jigsaw draws puzzles and jitter from torch's RNG each step: a resumed
    run must replay them bit-for-bit."""
    torch.set_num_threads(2)
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    args = ("train.epochs=2", "eval.final=false")
    Trainer(tiny_cfg(ref_dir, "jigsaw", *args)).fit()
    s1 = Trainer(tiny_cfg(cut_dir, "jigsaw", *args, "train.max_steps=5")).fit()
    assert s1["global_step"] == 5 and not s1["finished"]
    s2 = Trainer(tiny_cfg(cut_dir, "jigsaw", *args), resume=True).fit()
    assert s2["finished"] and s2["global_step"] == 16

    def recs(d):
        # step and epoch records; the resumed log also holds a "resume" event
        return [
            (r["kind"], r["step"], r["loss"], r.get("pretext_acc"), r.get("knn_acc"))
            for r in map(json.loads, (d / "run" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] in ("step", "epoch")
        ]

    assert recs(ref_dir) == recs(cut_dir)
    a = load_checkpoint_file(ref_dir / "run" / "last.pt")
    b = load_checkpoint_file(cut_dir / "run" / "last.pt")
    assert "permutations" in a["method"]
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k


@pytest.mark.parametrize("name", ["rotnet", "jigsaw", "cpc"])
def test_cifar_configs_build_and_step(name):
    """The shipped CIFAR-10 recipes fit 32 px crops (grid sizes, steps ahead)."""
    from pathlib import Path

    from sslext.app.config import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / f"{name}_resnet18_cifar10.yaml")
    mkw = {k: v for k, v in cfg["method"].items() if k != "name"}
    torch.manual_seed(0)
    m = build_method(name, build_backbone("resnet10", True, 8), **mkw)  # the heads/geometry, on a small trunk
    crop = cfg["augment"]["view1"]["crop_size"]
    loss, terms = m.training_step([torch.randn(4, 3, crop, crop)])
    assert math.isfinite(float(loss.detach())) and m.last_outputs["feats"].shape == (4, m.feat_dim)
    if name == "jigsaw":
        assert m.permutations.shape == (100, 9) and m.min_hamming == 6


@pytest.mark.parametrize("name", ["rotnet", "jigsaw", "cpc"])
def test_demo_method_overrides_give_valid_configs(name):
    # `python -m sslext.app.demo --method <name>` must resolve to a config that builds
    from sslext.app import demo
    from sslext.app.config import load_config
    from sslext.app.methods import build_method
    from sslext.models import build_backbone

    cfg = load_config(demo.DEMO_CONFIG, demo.method_overrides(name))
    assert cfg["method"]["name"] == name and cfg["optim"]["batch_size"] == 128
    m = build_method(
        name, build_backbone("resnet10", True, 16), **{k: v for k, v in cfg["method"].items() if k != "name"}
    )
    assert m.num_views == 1
