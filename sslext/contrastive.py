"""Losses of the contrastive and asymmetric (predictor + stop-gradient) methods:
SimCLR's NT-Xent, MoCo's InfoNCE against a queue of keys, BYOL's and
SimSiam's cosine losses, and the FIFO key queue MoCo keeps.

Plain PyTorch (no custom op): ``benchmarks/bench_contrastive.py`` measured
these losses at a small share of a training step, so a fused kernel was not
written (see ``docs/dev/benchmark_notes.md``).

Every loss computes in float32 (float64 inputs stay float64), returns a
scalar, and keeps detached diagnostics of its last call in ``last_terms``.
Inputs are ``(N, D)`` floating tensors; rows are L2-normalised inside the
loss, so raw projector/predictor outputs can be passed.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NTXentLoss", "InfoNCELoss", "BYOLLoss", "SimSiamLoss", "KeyQueue"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_temperature(t) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
    return float(t)


def _check_2d(x, name: str, min_rows: int = 1) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def _check_like(x, ref: Tensor, name: str, ref_name: str) -> None:
    _check_2d(x, name)
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}")
    if x.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {x.device}")


def _opmath(x: Tensor) -> Tensor:
    # Low-precision embeddings are upcast so the softmax/cosines are float32;
    # autograd casts the gradient back to the input dtype.
    return x if x.dtype == torch.float64 else x.float()


def _unit(x: Tensor) -> Tensor:
    return F.normalize(_opmath(x), dim=1)


class _Terms(nn.Module):
    last_terms: Dict[str, Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.last_terms = {}


class NTXentLoss(_Terms):
    """NT-Xent, SimCLR's loss (Chen et al., ICML 2020).

    ``loss_fn(z_a, z_b)`` with ``z_a``, ``z_b`` of shape ``(N, D)``, N >= 2,
    the projections of two views (row i of both comes from image i). The 2N
    rows are L2-normalised; each row is an anchor whose positive is the other
    view of its image and whose negatives are the other 2N - 2 rows
    (self-similarity is masked out). Loss = mean over the 2N anchors of
    ``-log softmax(sim / temperature)[positive]``.

    ``temperature`` defaults to 0.5 (the paper's CIFAR-10 choice); the
    solo-learn CIFAR recipe uses 0.2. ``last_terms``: ``positive_cosine``
    (mean cosine of the positive pairs).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        _check_2d(z_a, "z_a", min_rows=2)
        _check_like(z_b, z_a, "z_b", "z_a")
        n = z_a.shape[0]
        z = _unit(torch.cat([z_a, z_b], 0))
        sim = z @ z.T
        pos = sim.diagonal(n).detach()  # (z_a_i, z_b_i) pairs, read before masking
        eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = (sim / self.temperature).masked_fill(eye, float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        self.last_terms = {"positive_cosine": pos.mean()}
        return F.cross_entropy(logits, target)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class InfoNCELoss(_Terms):
    """InfoNCE of MoCo (He et al., CVPR 2020; MoCo v2: Chen et al., 2020).

    ``loss_fn(q, k, queue)``: queries ``q`` and their positive keys ``k``,
    both ``(N, D)``, and ``queue`` ``(K, D)`` of negative keys. ``q`` and
    ``k`` are L2-normalised here; ``queue`` rows must already be unit vectors
    (``KeyQueue`` stores normalised keys) and are used as they are, so a large
    queue is not copied every step. Logits are ``[q.k, q.queue^T] /
    temperature`` (N x (1 + K)), the positive at index 0; loss = mean cross
    entropy. The queue never receives gradient; ``k`` does if it requires one
    (MoCo computes keys under ``no_grad``). Default temperature 0.2 (MoCo v2).

    ``last_terms``: ``positive_cosine`` (mean q.k), ``negative_cosine``
    (mean q.queue).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        _check_2d(q, "q")
        _check_like(k, q, "k", "q")
        _check_2d(queue, "queue")
        if queue.shape[1] != q.shape[1]:
            raise ValueError(f"queue must have {q.shape[1]} columns (the dim of q), got shape {tuple(queue.shape)}")
        if queue.device != q.device:
            raise ValueError(f"queue must be on the device of q ({q.device}), got {queue.device}")
        qn, kn = _unit(q), _unit(k)
        l_pos = (qn * kn).sum(1, keepdim=True)
        l_neg = qn @ queue.detach().to(qn.dtype).T
        logits = torch.cat([l_pos, l_neg], 1) / self.temperature
        self.last_terms = {"positive_cosine": l_pos.detach().mean(), "negative_cosine": l_neg.detach().mean()}
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def _cosine_pairs(p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor):
    _check_2d(p_a, "p_a")
    for x, nm in ((p_b, "p_b"), (z_a, "z_a"), (z_b, "z_b")):
        _check_like(x, p_a, nm, "p_a")
    # Stop-gradient on the targets is what prevents collapse in BYOL/SimSiam.
    cos_ab = (_unit(p_a) * _unit(z_b.detach())).sum(1)
    cos_ba = (_unit(p_b) * _unit(z_a.detach())).sum(1)
    return cos_ab, cos_ba


class BYOLLoss(_Terms):
    """BYOL's symmetrised loss (Grill et al., NeurIPS 2020).

    ``loss_fn(p_a, p_b, z_a, z_b)``: online predictions ``p_a``, ``p_b`` of
    views a and b and target projections ``z_a``, ``z_b``, all ``(N, D)``.
    Loss = ``mean(2 - 2 cos(p_a, z_b)) + mean(2 - 2 cos(p_b, z_a))`` (the
    paper's L + L~, a sum). ``z_a``, ``z_b`` are detached: the target gets
    no gradient. ``last_terms``: ``cosine`` (mean of both cosines).
    """

    def forward(self, p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
        cos_ab, cos_ba = _cosine_pairs(p_a, p_b, z_a, z_b)
        self.last_terms = {"cosine": (cos_ab.detach().mean() + cos_ba.detach().mean()) / 2}
        return (2 - 2 * cos_ab).mean() + (2 - 2 * cos_ba).mean()


class SimSiamLoss(_Terms):
    """SimSiam's symmetrised negative cosine (Chen & He, CVPR 2021).

    ``loss_fn(p_a, p_b, z_a, z_b)``: predictor outputs ``p_a``, ``p_b`` and
    projector outputs ``z_a``, ``z_b`` of views a and b, all ``(N, D)``.
    Loss = ``-(mean cos(p_a, sg(z_b)) + mean cos(p_b, sg(z_a))) / 2`` (the
    paper's D/2 + D/2, minimum -1); sg = stop-gradient, ``z`` is detached
    here. ``last_terms``: ``cosine`` (mean of both cosines, = -loss).
    """

    def forward(self, p_a: Tensor, p_b: Tensor, z_a: Tensor, z_b: Tensor) -> Tensor:
        cos_ab, cos_ba = _cosine_pairs(p_a, p_b, z_a, z_b)
        loss = -(cos_ab.mean() + cos_ba.mean()) / 2
        self.last_terms = {"cosine": -loss.detach()}
        return loss


class KeyQueue(nn.Module):
    """FIFO queue of ``size`` keys of dimension ``dim`` (MoCo's dictionary).

    ``keys`` (``(size, dim)`` float32) and the write pointer ``ptr`` (0-dim
    int64) are registered buffers, so the queue is in ``state_dict`` and a
    resumed run continues with the same negatives in the same order. It
    starts with random unit vectors, as the official MoCo code does.

    ``enqueue(k)`` overwrites the oldest ``B = k.shape[0]`` rows (wrapping
    around the end) and advances the pointer by B mod ``size``; any
    ``B <= size`` is exact FIFO, ``size`` need not be a multiple of B.
    Keys are stored as given (detached): pass L2-normalised keys when the
    queue feeds ``InfoNCELoss``.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        for v, nm in ((size, "size"), (dim, "dim")):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{nm} must be a positive int, got {v!r}")
        self.size, self.dim = size, dim
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, k: Tensor) -> None:
        _check_2d(k, "k")
        if k.shape[1] != self.dim:
            raise ValueError(f"k must have {self.dim} columns (the queue's dim), got shape {tuple(k.shape)}")
        b = k.shape[0]
        if b > self.size:
            raise ValueError(
                f"k: cannot enqueue {b} keys into a queue of size {self.size}; "
                f"the queue size must be >= the keys enqueued per step"
            )
        # Indices computed on the device: no host sync to read the pointer.
        idx = (self.ptr + torch.arange(b, device=self.ptr.device)) % self.size
        self.keys.index_copy_(0, idx.to(self.keys.device), k.detach().to(self.keys.dtype))
        self.ptr.copy_((self.ptr + b) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
