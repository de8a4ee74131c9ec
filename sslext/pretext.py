"""Building blocks of the pretext-task methods (RotNet, Jigsaw, CPC).

* ``rotation_batch``: every image at 0/90/180/270 degrees plus the rotation
  labels (Gidaris, Singh & Komodakis, ICLR 2018).
* ``hamming_permutations`` / ``jigsaw_tiles``: the fixed permutation set
  chosen greedily for a large Hamming distance, and the 3x3 tiler with random
  jitter inside each cell (Noroozi & Favaro, ECCV 2016).
* ``patch_grid`` / ``ContextNetwork`` / ``cpc_infonce``: the overlapping
  patch grid, a row-causal masked-convolution context network and the
  InfoNCE loss predicting patch encodings k rows below (van den Oord, Li &
  Vinyals 2018; Henaff et al., ICML 2020).

Argument names match the ``method.*`` config keys of the methods using them,
so their ``ValueError`` messages (``"<arg>: expected ..."``) name the key.
"""

from __future__ import annotations

import contextlib
import math
from functools import lru_cache
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "rotation_batch",
    "hamming_permutations",
    "min_hamming_distance",
    "jigsaw_tiles",
    "normalize_tiles",
    "patch_grid",
    "CausalRowConv",
    "ContextNetwork",
    "cpc_infonce",
    "bn_stats_frozen",
]


def _check_images(x: torch.Tensor, name: str = "images") -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"{name}: expected a float tensor (N, C, H, W), got "
            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
        )


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return v


@contextlib.contextmanager
def bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Train-mode BatchNorm that normalises with batch statistics but leaves
    the running statistics (and ``num_batches_tracked``) untouched.

    The pretext methods feed the backbone tiles or patches, while evaluation
    runs it on whole images with the running statistics; estimating those
    only from whole images keeps evaluation in the distribution it sees.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.track_running_stats for m in bns]
    try:
        for m in bns:
            m.track_running_stats = False
        yield
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s


# ---------------------------------------------------------------------- RotNet
def rotation_batch(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of a square batch.

    Returns ``(images, labels)``: ``images`` (4N, C, H, W) is
    ``[x, rot90(x), rot180(x), rot270(x)]`` (counter-clockwise, ``torch.rot90``
    over (H, W)) in that block order, so ``images[:N]`` is ``x`` itself;
    ``labels[i]`` is the number of quarter turns (0..3).
    """
    _check_images(x)
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"images: rotation needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    n = x.shape[0]
    imgs = torch.cat([x] + [torch.rot90(x, k, dims=(2, 3)) for k in (1, 2, 3)], 0)
    labels = torch.arange(4, device=x.device).repeat_interleave(n)
    return imgs, labels


# ---------------------------------------------------------------------- Jigsaw
_MAX_ENUMERATED_TILES = 9  # 9! = 362,880 candidates: enumerated exactly


@lru_cache(maxsize=4)
def _all_permutations(n: int) -> np.ndarray:
    """All ``n!`` permutations of ``range(n)`` in lexicographic order, (n!, n) uint8.

    Built by prepending each first element to the permutations of the rest
    (vectorised; ``itertools`` + ``torch.tensor`` takes seconds for 9!).
    """
    perms = np.zeros((1, 0), dtype=np.uint8)
    for m in range(1, n + 1):
        # perms: all permutations of range(m - 1); extend them to range(m).
        blocks = []
        for first in range(m):
            rest = perms + (perms >= first).astype(np.uint8)  # relabel to range(m) without `first`
            blocks.append(np.concatenate([np.full((rest.shape[0], 1), first, dtype=np.uint8), rest], 1))
        perms = np.concatenate(blocks, 0)
    perms.setflags(write=False)
    return perms


@lru_cache(maxsize=8)
def _greedy_permutations(num_permutations: int, grid: int, seed: int) -> torch.Tensor:
    n = grid * grid
    cands = _all_permutations(n)
    total = cands.shape[0]
    # numpy, one contiguous row per tile position: ~1 ms per pick for 9!
    # candidates where torch's small-op overhead under load made it 5x slower.
    cols = np.ascontiguousarray(cands.T)

    def dist(j: int) -> np.ndarray:
        d = np.zeros(total, dtype=np.uint8)
        for i in range(n):
            d += cols[i] != cols[i, j]
        return d

    g = torch.Generator().manual_seed(seed)
    j = int(torch.randint(total, (1,), generator=g))
    chosen = [j]
    dmin = dist(j)
    for _ in range(num_permutations - 1):
        ties = np.flatnonzero(dmin == dmin.max())
        j = int(ties[int(torch.randint(ties.size, (1,), generator=g))])
        chosen.append(j)
        np.minimum(dmin, dist(j), out=dmin)
    return torch.from_numpy(cands[chosen].astype(np.int64))


def hamming_permutations(num_permutations: int, grid: int = 3, seed: int = 0) -> torch.Tensor:
    """A set of ``num_permutations`` distinct permutations of ``grid**2`` tiles
    chosen greedily for a large Hamming distance.

    Farthest-point selection over all ``(grid**2)!`` permutations: start from a
    random one, then repeatedly add the permutation whose smallest Hamming
    distance to the set is largest (ties broken at random). Noroozi & Favaro's
    ``maximal`` set maximises the *average* distance instead; the max-min
    rule used here guarantees the minimum distance reported by
    ``min_hamming_distance``. Deterministic given ``seed`` (and cached).

    Returns a long tensor (num_permutations, grid**2); row ``p`` lists which
    original tile goes to each shuffled position.
    """
    _check_int("grid", grid, 2)
    if grid * grid > _MAX_ENUMERATED_TILES:
        raise ValueError(f"grid: expected 2 or 3 (the greedy search enumerates all (grid^2)! permutations), got {grid}")
    total = math.factorial(grid * grid)
    _check_int("num_permutations", num_permutations, 1)
    if num_permutations > total:
        raise ValueError(
            f"num_permutations: a {grid}x{grid} grid has only {total} distinct permutations, got {num_permutations}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    return _greedy_permutations(num_permutations, grid, seed).clone()


def min_hamming_distance(perms: torch.Tensor) -> int:
    """Smallest pairwise Hamming distance between the rows of ``perms``."""
    if perms.ndim != 2 or perms.shape[0] < 2:
        raise ValueError(f"perms: expected (P >= 2, n), got {tuple(perms.shape)}")
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def _tile_geometry(h: int, w: int, grid: int, tile_ratio: float) -> Tuple[int, int]:
    _check_int("grid", grid, 2)
    if not isinstance(tile_ratio, (int, float)) or isinstance(tile_ratio, bool) or not 0 < tile_ratio <= 1:
        raise ValueError(f"tile_ratio: expected a number in (0, 1], got {tile_ratio!r}")
    cell = min(h, w) // grid
    tile = int(round(cell * tile_ratio))
    if cell < 2 or tile < 1:
        raise ValueError(
            f"images: {h}x{w} is too small for a {grid}x{grid} jigsaw grid (cells of {cell} px, "
            f"tiles of {tile} px); expected at least {2 * grid} px"
        )
    return cell, tile


def jigsaw_tiles(
    x: torch.Tensor,
    perms: torch.Tensor,
    grid: int = 3,
    tile_ratio: float = 0.75,
    labels: Optional[torch.Tensor] = None,
    offsets: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cut each image into ``grid x grid`` jittered tiles and shuffle them.

    The central ``grid*cell`` square (``cell = min(H, W) // grid``) is divided
    into cells; from each cell a tile of ``round(cell * tile_ratio)`` px is cut
    at a random offset, so neighbouring tiles are separated by a random gap
    and edge continuity cannot solve the puzzle. Each image is then shuffled
    by ``perms[label]``: shuffled position ``i`` holds original tile
    ``perms[label, i]`` (tiles numbered row-major).

    Args:
        x: (N, C, H, W) float images.
        perms: (P, grid**2) permutation set (``hamming_permutations``).
        labels: (N,) permutation indices; drawn uniformly if ``None``.
        offsets: (N, grid**2, 2) integer (y, x) offsets in ``[0, cell - tile]``;
            drawn uniformly if ``None``.
        generator: CPU generator for the draws (default: torch's global one,
            which the trainer checkpoints).

    Returns ``(tiles (N, grid**2, C, tile, tile), labels (N,))``.
    """
    _check_images(x)
    n, c, h, w = x.shape
    cell, tile = _tile_geometry(h, w, grid, tile_ratio)
    k = grid * grid
    if perms.ndim != 2 or perms.shape[1] != k:
        raise ValueError(f"perms: expected (P, {k}) for a {grid}x{grid} grid, got {tuple(perms.shape)}")
    if labels is None:
        labels = torch.randint(perms.shape[0], (n,), generator=generator)
    elif (
        labels.shape != (n,)
        or labels.is_floating_point()
        or int(labels.min()) < 0
        or int(labels.max()) >= perms.shape[0]
    ):
        raise ValueError(f"labels: expected {n} integers in [0, {perms.shape[0]}), got {labels!r}")
    jit = cell - tile
    if offsets is None:
        offsets = torch.randint(jit + 1, (n, k, 2), generator=generator)
    elif offsets.shape != (n, k, 2) or int(offsets.min()) < 0 or int(offsets.max()) > jit:
        raise ValueError(f"offsets: expected ({n}, {k}, 2) integers in [0, {jit}], got {tuple(offsets.shape)}")
    dev = x.device
    labels, offsets = labels.to(dev), offsets.to(dev)
    top, left = (h - grid * cell) // 2, (w - grid * cell) // 2
    cells = torch.arange(k, device=dev)
    y0 = top + (cells // grid) * cell + offsets[..., 0]  # (N, k)
    x0 = left + (cells % grid) * cell + offsets[..., 1]
    ar = torch.arange(tile, device=dev)
    rows = (y0[..., None] + ar)[..., :, None]  # (N, k, t, 1)
    cols = (x0[..., None] + ar)[..., None, :]  # (N, k, 1, t)
    nidx = torch.arange(n, device=dev).view(n, 1, 1, 1)
    tiles = x[nidx, :, rows, cols].permute(0, 1, 4, 2, 3)  # advanced indices first: (N, k, t, t, C)
    order = perms.to(dev)[labels]  # (N, k)
    tiles = tiles[torch.arange(n, device=dev)[:, None], order]
    return tiles.contiguous(), labels


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Standardise every tile on its own (mean 0, std 1 over its C*t*t values).

    Noroozi & Favaro normalise tiles independently so that low-level
    statistics shared by neighbours (brightness, contrast) cannot give the
    arrangement away. ``eps`` floors the std so flat tiles stay near 0.
    """
    dims = tuple(range(tiles.ndim - 3, tiles.ndim))
    mu = tiles.mean(dims, keepdim=True)
    sd = tiles.std(dims, keepdim=True, unbiased=False).clamp_min(eps)
    return (tiles - mu) / sd


# ---------------------------------------------------------------------- CPC
def patch_grid(x: torch.Tensor, patch_size: int, patch_stride: int) -> torch.Tensor:
    """Overlapping square patches on a regular grid.

    Returns (N, G_h, G_w, C, patch_size, patch_size) with
    ``G = (size - patch_size) // patch_stride + 1`` along each axis
    (e.g. 32 px, patches of 8, stride 4 -> a 7x7 grid).
    """
    _check_images(x)
    _check_int("patch_size", patch_size, 1)
    _check_int("patch_stride", patch_stride, 1)
    n, c, h, w = x.shape
    if h < patch_size or w < patch_size:
        raise ValueError(f"patch_size: {patch_size} is larger than the {h}x{w} images")
    p = x.unfold(2, patch_size, patch_stride).unfold(3, patch_size, patch_stride)  # (N, C, Gh, Gw, p, p)
    return p.permute(0, 2, 3, 1, 4, 5)


class CausalRowConv(nn.Conv2d):
    """Convolution whose output at row ``r`` sees only input rows ``<= r``.

    A ``kernel_size x kernel_size`` kernel padded ``kernel_size - 1`` rows on
    top and none below (PixelCNN-style masking of the future rows by
    construction); columns are padded symmetrically, so every column of the
    rows above contributes.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        _check_int("context_kernel", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"context_kernel: expected an odd int, got {kernel_size}")
        super().__init__(in_ch, out_ch, kernel_size, padding=0)
        self.k = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k
        return super().forward(F.pad(x, (k // 2, k // 2, k - 1, 0)))


class ContextNetwork(nn.Module):
    """Row-autoregressive context network over a grid of patch encodings.

    ``(N, in_dim, G, G) -> (N, context_dim, G, G)``: a 1x1 input projection
    then ``context_layers`` residual blocks of two ``CausalRowConv`` with
    ReLUs (the masked-convolution context network of CPC v2, without
    normalisation layers: batch statistics would mix rows and break
    causality). Output row ``r`` depends only on input rows ``0..r``.
    """

    def __init__(self, in_dim: int, context_dim: int = 256, context_layers: int = 2, context_kernel: int = 3) -> None:
        super().__init__()
        _check_int("in_dim", in_dim, 1)
        _check_int("context_dim", context_dim, 1)
        _check_int("context_layers", context_layers, 0)
        self.inp = nn.Conv2d(in_dim, context_dim, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                CausalRowConv(context_dim, context_dim, context_kernel),
                nn.ReLU(),
                CausalRowConv(context_dim, context_dim, context_kernel),
            )
            for _ in range(context_layers)
        )
        self.out_dim = context_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4:
            raise ValueError(f"z: expected (N, D, G_h, G_w), got {tuple(z.shape)}")
        c = self.inp(z)
        for b in self.blocks:
            c = c + b(c)
        return c


def cpc_infonce(
    z: torch.Tensor, context: torch.Tensor, predictors: Sequence[nn.Module]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of CPC on a patch grid.

    For every step ``k = 1..K`` (``K = len(predictors)``) and every patch at
    row ``r < G_h - k``, ``predictors[k-1](context[n, :, r, col])`` scores
    (dot product) all ``N*G_h*G_w`` patch encodings of the batch; the
    positive is ``z[n, :, r+k, col]``, every other patch of the same image and
    of the other images is a negative. The loss is the cross-entropy averaged
    over the queries of each ``k``, then over ``k``.

    Args:
        z: (N, D, G_h, G_w) patch encodings (targets and negatives).
        context: (N, D_c, G_h, G_w) context vectors (row-causal in ``z``).
        predictors: one module ``D_c -> D`` per step ``k``.

    Returns ``(loss, accuracy)``; accuracy (detached, in [0, 1]) is the
    fraction of queries whose positive scores highest.
    """
    if z.ndim != 4 or context.ndim != 4 or z.shape[0] != context.shape[0] or z.shape[2:] != context.shape[2:]:
        raise ValueError(
            f"z/context: expected (N, D, G_h, G_w) grids of the same size, got "
            f"{tuple(z.shape)} and {tuple(context.shape)}"
        )
    n, d, gh, gw = z.shape
    steps = len(predictors)
    if steps < 1 or steps >= gh:
        raise ValueError(f"steps: expected 1 <= steps < {gh} (the patch grid has {gh} rows), got {steps}")
    keys = z.permute(0, 2, 3, 1).reshape(n * gh * gw, d)
    pos = torch.arange(n * gh * gw, device=z.device).view(n, gh, gw)
    losses: List[torch.Tensor] = []
    correct, total = z.new_zeros(()), 0
    for k, pred in enumerate(predictors, start=1):
        q = context[:, :, : gh - k].permute(0, 2, 3, 1).reshape(-1, context.shape[1])
        logits = pred(q) @ keys.T
        target = pos[:, k:].reshape(-1)
        losses.append(F.cross_entropy(logits, target))
        with torch.no_grad():
            correct = correct + (logits.argmax(1) == target).sum()
            total += target.numel()
    return torch.stack(losses).mean(), (correct.float() / total).detach()


# ---------------------------------------------------------------------- method helpers
def single_view(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """The one augmented view a pretext method trains on (``num_views = 1``)."""
    if not isinstance(views, (list, tuple)) or len(views) != 1 or not isinstance(views[0], torch.Tensor):
        raise ValueError(
            f"views: expected a list of 1 batch (pretext methods use one view), got "
            f"{type(views).__name__} of length {len(views) if hasattr(views, '__len__') else '?'}"
        )
    return views[0]


def check_widths(key: str, widths, allow_empty: bool = False) -> List[int]:
    """Validate a list of hidden-layer widths given as config key ``key``."""
    if (
        not isinstance(widths, (list, tuple))
        or (not widths and not allow_empty)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in widths)
    ):
        raise ValueError(
            f"{key}: expected a {'' if allow_empty else 'non-empty '}list of positive ints, got {widths!r}"
        )
    return list(widths)
