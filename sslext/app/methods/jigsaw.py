"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual
Representations by Solving Jigsaw Puzzles", ECCV 2016)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.heads import MLP
from ...pretext import (
    bn_stats_frozen,
    check_widths,
    hamming_permutations,
    jigsaw_tiles,
    min_hamming_distance,
    normalize_tiles,
    single_view,
)
from .base import Method, register_method


@register_method("jigsaw")
class Jigsaw(Method):
    """Recognise which of ``num_permutations`` fixed permutations shuffled the
    ``grid x grid`` tiles of an image (context-free network).

    The backbone encodes every tile separately (shared weights); a per-tile
    layer ``feat_dim -> tile_dim`` (Linear-BN-ReLU, the paper's fc6), the
    concatenation of the tiles in shuffled order and an MLP with ``hidden``
    widths classify the permutation index.

    Small images: tiles are cut at native resolution, no upsampling. On 32 px
    crops the central 30x30 square has 10 px cells and ``tile_ratio=0.75``
    cuts 8 px tiles (the paper: 64 px tiles in 85 px cells), i.e. up to 2 px
    of jitter per axis and 0-4 px gaps between neighbours. Native scale keeps
    the pixel statistics the backbone learns identical to the whole images it
    is evaluated on, and costs 9*64 = 576 px per image instead of 1024.
    Tiles are standardised one by one (``normalize_tiles``, as in the paper).

    The permutation set (greedy max-min Hamming distance, seeded by
    ``permutation_seed``) is a buffer, so checkpoints carry it; its minimum
    pairwise distance is ``self.min_hamming``. BatchNorm running statistics
    are estimated from whole images only (a no-grad whole-image forward each
    step, which also gives the online probe its features); the tile forward
    normalises with batch statistics and leaves them untouched.
    """

    num_views = 1
    DEFAULTS = dict(
        grid=3,
        num_permutations=100,
        permutation_seed=0,
        tile_ratio=0.75,
        normalize_tiles=True,
        tile_dim=256,
        hidden=[1024],
    )

    HELP = dict(
        grid="tiles per side (grid x grid puzzle)",
        num_permutations="size of the permutation set to classify",
        permutation_seed="seeds the choice of permutations",
        tile_ratio="tile side as a fraction of its grid cell (random offset inside)",
        normalize_tiles="standardise each tile on its own (as in the paper)",
        tile_dim="width of the per-tile fully connected layer",
        hidden="widths of the MLP over the concatenated tiles",
    )

    def __init__(
        self, backbone, grid, num_permutations, permutation_seed, tile_ratio, normalize_tiles, tile_dim, hidden
    ) -> None:
        super().__init__(backbone)
        hidden = check_widths("method.hidden", hidden, allow_empty=True)
        if not isinstance(normalize_tiles, bool):
            raise ValueError(f"method.normalize_tiles: expected true/false, got {normalize_tiles!r}")
        if isinstance(tile_dim, bool) or not isinstance(tile_dim, int) or tile_dim <= 0:
            raise ValueError(f"method.tile_dim: expected a positive int, got {tile_dim!r}")
        if isinstance(permutation_seed, bool) or not isinstance(permutation_seed, int):
            raise ValueError(f"method.permutation_seed: expected an int, got {permutation_seed!r}")
        if isinstance(tile_ratio, bool) or not isinstance(tile_ratio, (int, float)) or not 0 < tile_ratio <= 1:
            raise ValueError(f"method.tile_ratio: expected a number in (0, 1], got {tile_ratio!r}")
        try:
            perms = hamming_permutations(num_permutations, grid, permutation_seed)
        except ValueError as e:
            raise ValueError(f"method.{e}") from None
        self.grid, self.tile_ratio, self.normalize = grid, float(tile_ratio), normalize_tiles
        self.register_buffer("permutations", perms)
        self.min_hamming = min_hamming_distance(perms) if num_permutations > 1 else 0
        self.projector = None  # no embedding head: evaluation uses backbone features only
        self.tile_fc = nn.Sequential(
            nn.Linear(self.feat_dim, tile_dim, bias=False), nn.BatchNorm1d(tile_dim), nn.ReLU(inplace=True)
        )
        self.classifier = MLP([grid * grid * tile_dim, *hidden, num_permutations])

    def training_step(self, views):
        x = single_view(views)
        n = x.shape[0]
        try:
            tiles, labels = jigsaw_tiles(x, self.permutations, self.grid, self.tile_ratio)
        except ValueError as e:
            raise ValueError(f"augment.view1.crop_size / method.grid: {e}") from None
        k, t = tiles.shape[1], tiles.shape[-1]
        tiles = tiles.view(n * k, x.shape[1], t, t)
        if self.normalize:
            tiles = normalize_tiles(tiles)
        with bn_stats_frozen(self.backbone):
            h = self.backbone(tiles)
        logits = self.classifier(self.tile_fc(h).reshape(n, -1))
        with torch.autocast(device_type=x.device.type, enabled=False):
            loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            feats = self.backbone(x)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        self.last_outputs = {"feats": feats.detach()}
        return loss, {"pretext_acc": acc}
