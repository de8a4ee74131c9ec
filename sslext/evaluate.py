"""Evaluation of SSL representations: feature extraction, linear probe, kNN,
and collapse diagnostics (per-dimension std, RankMe effective rank, dead dims).

All accuracies are on the *test* split. Probes run on frozen features that
are standardised with statistics of the (labelled) training features. The
offline evaluation of a saved run, which rebuilds its model, is
:func:`sslext.app.training.evaluate_checkpoint` (``sslext-eval``).
"""

from __future__ import annotations

import math
import time
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .data.augment import prepare_eval

__all__ = [
    "extract_features",
    "linear_probe",
    "knn_accuracy",
    "rankme",
    "singular_spectrum",
    "collapse_diagnostics",
    "stratified_subset",
    "evaluate_backbone",
]


def _check_feats(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a float tensor (N, D), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )


def _check_labels(name: str, y: torch.Tensor, n: int) -> None:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != n or y.is_floating_point():
        raise ValueError(
            f"{name}: expected an integer tensor of shape ({n},), got "
            f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}"
        )


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: torch.Tensor,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    crop_size: Optional[int] = None,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    projector: Optional[nn.Module] = None,
    progress: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Features of uint8 ``images`` (N, 3, H, W) in eval mode (float32, on CPU).

    Returns ``(features, embeddings)``; embeddings are ``projector(features)``
    when a projector is given, else ``None``. Train/eval mode is restored.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images: expected uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if batch_size <= 0:
        raise ValueError(f"batch_size: expected > 0, got {batch_size}")
    crop_size = crop_size or images.shape[-1]
    mods = [m for m in (encoder, projector) if m is not None]
    modes = [m.training for m in mods]
    for m in mods:
        m.eval()
    feats, embs = [], []
    rng = range(0, images.shape[0], batch_size)
    if progress:
        rng = tqdm(rng, desc="features", leave=False)
    try:
        for i in rng:
            x = prepare_eval(images[i : i + batch_size].to(device, non_blocking=True), crop_size, mean, std)
            h = encoder(x).float()
            feats.append(h.cpu())
            if projector is not None:
                embs.append(projector(h).float().cpu())
    finally:
        for m, t in zip(mods, modes):
            m.train(t)
    return torch.cat(feats), (torch.cat(embs) if projector is not None else None)


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a class-stratified random ``fraction`` of ``labels`` (>= 1 per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        k = max(1, int(round(fraction * idx.numel())))
        out.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    return torch.cat(out).sort().values


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 100,
    lr: float = 0.01,
    weight_decay: float = 1e-6,
    batch_size: int = 1024,
    seed: int = 0,
    num_classes: Optional[int] = None,
) -> Dict[str, float]:
    """Train a linear classifier on frozen features; return train/test accuracy (%).

    Features are standardised with the training statistics (so the random-
    init baseline is not handicapped by feature scale); Adam with a cosine
    schedule, cross-entropy, mini-batches drawn from a seeded generator.
    """
    _check_feats("train_x", train_x)
    _check_feats("test_x", test_x)
    _check_labels("train_y", train_y, train_x.shape[0])
    _check_labels("test_y", test_y, test_x.shape[0])
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"test_x: expected {train_x.shape[1]} features like train_x, got {test_x.shape[1]}")
    if epochs <= 0:
        raise ValueError(f"epochs: expected > 0, got {epochs}")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    # Trained where the features are (a CUDA tensor trains on its GPU).
    dev = train_x.device
    train_y, test_y = train_y.to(dev), test_y.to(dev)
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mu) / sd, (test_x - mu) / sd
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight init
    clf = nn.Linear(xtr.shape[1], num_classes).to(dev)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    n = xtr.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(dev)
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            loss = F.cross_entropy(clf(xtr[b]), train_y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        tr = (clf(xtr).argmax(1) == train_y).float().mean().item() * 100
        te = (clf(xte).argmax(1) == test_y).float().mean().item() * 100
    return {"train_acc": tr, "test_acc": te}


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: Optional[int] = None,
    chunk: int = 1024,
) -> float:
    """Weighted kNN accuracy (%) with cosine similarity (Wu et al., 2018).

    Each of the ``k`` nearest training samples votes for its class with
    weight ``exp(sim / temperature)``.
    """
    _check_feats("train_x", train_x)
    _check_feats("test_x", test_x)
    _check_labels("train_y", train_y, train_x.shape[0])
    _check_labels("test_y", test_y, test_x.shape[0])
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"test_x: expected {train_x.shape[1]} features like train_x, got {test_x.shape[1]}")
    if not isinstance(k, int) or k <= 0:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    k = min(k, train_x.shape[0])
    tr = F.normalize(train_x.float(), dim=1)
    train_y, test_y = train_y.to(tr.device), test_y.to(tr.device)
    correct = 0
    for i in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[i : i + chunk].float(), dim=1)
        sim, idx = (q @ tr.T).topk(k, dim=1)
        w = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device).scatter_add_(1, train_y[idx], w)
        correct += (votes.argmax(1) == test_y[i : i + chunk]).sum().item()
    return correct / test_x.shape[0] * 100


def rankme(z: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe effective rank (Garrido et al., 2023): exp(entropy of normalised singular values)."""
    _check_feats("z", z)
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def singular_spectrum(z: torch.Tensor) -> list:
    """Singular values of the centered ``z`` (N, D), descending, divided by the largest.

    The picture of dimensional collapse (Jing et al., 2022): a collapsed
    dimension shows as a cliff to ~0 at the end of the spectrum.
    """
    _check_feats("z", z)
    x = z.double()
    s = torch.linalg.svdvals(x - x.mean(0))
    return (s / s[0].clamp_min(1e-300)).tolist()


def collapse_diagnostics(z: torch.Tensor, prefix: str = "", dead_rel: float = 1e-3) -> Dict[str, float]:
    """Collapse indicators of a batch of representations ``z`` (N, D).

    * ``std_mean``/``std_min``: per-dimension std (averaged / smallest);
    * ``norm_std``: mean per-dim std of L2-normalised rows — ``1/sqrt(D)`` for
      well-spread embeddings, 0 under complete collapse (SimSiam, Sec. 4);
    * ``rankme``: effective rank; ``dead_frac``: fraction of dimensions whose
      std is below ``dead_rel`` x the mean std (constant dimensions).
    """
    _check_feats("z", z)
    z = z.float()
    std = z.std(0)
    mean_std = std.mean().clamp_min(1e-12)
    return {
        f"{prefix}std_mean": float(std.mean()),
        f"{prefix}std_min": float(std.min()),
        f"{prefix}norm_std": float(F.normalize(z, dim=1).std(0).mean()),
        f"{prefix}rankme": rankme(z),
        f"{prefix}dead_frac": float((std < dead_rel * mean_std).float().mean()),
        f"{prefix}dim": float(z.shape[1]),
    }


def evaluate_backbone(
    encoder: nn.Module,
    train_ds,
    test_ds,
    *,
    device="cpu",
    crop_size: int,
    mean,
    std,
    projector: Optional[nn.Module] = None,
    batch_size: int = 512,
    probe_epochs: int = 100,
    probe_lr: float = 0.01,
    label_fraction: float = 0.1,
    knn_k: int = 200,
    knn_t: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    diag_samples: int = 4096,
) -> Dict[str, float]:
    """Offline evaluation of a frozen encoder on labelled train/test datasets.

    Returns test accuracies of the linear probe (all labels and a stratified
    ``label_fraction``), weighted kNN, collapse diagnostics, and the
    normalised singular-value spectra (lists) of the backbone features and
    projector embeddings.
    """
    for nm, ds in (("train_ds", train_ds), ("test_ds", test_ds)):
        if ds.labels is None:
            raise ValueError(f"{nm}: evaluation needs a labelled dataset")
    t0 = time.time()
    xtr, ztr = extract_features(encoder, train_ds.images, batch_size, device, crop_size, mean, std, projector, progress)
    xte, _ = extract_features(encoder, test_ds.images, batch_size, device, crop_size, mean, std, None, progress)
    ytr, yte = train_ds.labels, test_ds.labels
    nc = max(train_ds.num_classes, test_ds.num_classes)
    res: Dict[str, float] = {}
    res["linear_acc"] = linear_probe(xtr, ytr, xte, yte, probe_epochs, probe_lr, seed=seed, num_classes=nc)["test_acc"]
    sub = stratified_subset(ytr, label_fraction, seed)
    res[f"linear_acc_{int(round(label_fraction * 100))}pct"] = linear_probe(
        xtr[sub], ytr[sub], xte, yte, probe_epochs, probe_lr, seed=seed, num_classes=nc
    )["test_acc"]
    res["knn_acc"] = knn_accuracy(xtr, ytr, xte, yte, knn_k, knn_t, nc)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(xtr.shape[0], generator=g)[:diag_samples]
    res.update(collapse_diagnostics(xtr[pick], "backbone_"))
    res["backbone_spectrum"] = singular_spectrum(xtr[pick])
    if ztr is not None:
        res.update(collapse_diagnostics(ztr[pick], "projector_"))
        res["projector_spectrum"] = singular_spectrum(ztr[pick])
    res["eval_seconds"] = time.time() - t0
    return res
