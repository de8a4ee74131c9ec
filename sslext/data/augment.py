"""Batched, per-sample-random two-view augmentation running on the data's device.

Every transform draws an independent parameter per sample from an explicit
``torch.Generator`` (on CPU, so the stream is identical whatever the training
device is and its state can be checkpointed), then applies the whole batch in
a few tensor ops. Operations follow torchvision's definitions:

* random resized crop (area ``scale``, log-uniform aspect ``ratio``, 10
  attempts then the full image, as torchvision does) fused with the
  horizontal flip into one ``affine_grid``/``grid_sample`` call;
* colour jitter (brightness, contrast, saturation, hue) applied with
  probability ``jitter_prob``; the order of the four ops is drawn once per
  batch (torchvision draws it per image — a deliberate simplification);
* grayscale, Gaussian blur (sigma in [0.1, 2]), solarisation (threshold 0.5).

Defaults are the CIFAR recipe of solo-learn (``scripts/pretrain/cifar/
vicreg.yaml`` and ``augmentations/asymmetric.yaml``): crop scale (0.2, 1),
jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale p=0.2, no blur, flip p=0.5;
solarisation p=0.0 on view 1 and p=0.2 on view 2 (asymmetric recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ViewAugment", "TwoViewAugment", "prepare_eval", "DATASET_STATS"]

DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion_mnist": ((0.2860,) * 3, (0.3530,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

_GRAY = (0.299, 0.587, 0.114)


@dataclass
class ViewAugment:
    """Parameters of the augmentation of one view (all probabilities in [0, 1])."""

    crop_size: int = 32
    crop_min_scale: float = 0.2
    crop_max_scale: float = 1.0
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_prob: float = 0.2
    blur_prob: float = 0.0
    solarize_prob: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "crop_size":
                if not isinstance(v, int) or isinstance(v, bool) or v < 4:
                    raise ValueError(f"crop_size: expected an int >= 4, got {v!r}")
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{f.name}: expected a finite number >= 0, got {v!r}")
            if f.name.endswith("_prob") and v > 1:
                raise ValueError(f"{f.name}: expected a probability in [0, 1], got {v!r}")
        if not 0 < self.crop_min_scale <= self.crop_max_scale <= 1:
            raise ValueError(
                f"crop_min_scale/crop_max_scale: expected 0 < min <= max <= 1, got "
                f"{self.crop_min_scale}, {self.crop_max_scale}"
            )
        if self.hue > 0.5:
            raise ValueError(f"hue: expected a value in [0, 0.5], got {self.hue}")


_GRAY_ON: Dict[Tuple[str, torch.dtype], torch.Tensor] = {}


def _gray(x: torch.Tensor) -> torch.Tensor:
    # Cached per device: a fresh x.new_tensor(...) is a blocking host-to-device copy on CUDA.
    key = (str(x.device), x.dtype)
    w = _GRAY_ON.get(key)
    if w is None:
        w = _GRAY_ON[key] = torch.tensor(_GRAY, dtype=x.dtype).view(1, 3, 1, 1).to(x.device)
    return (x * w).sum(1, keepdim=True)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    dsafe = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, ((g - b) / dsafe) % 6, torch.where(maxc == g, (b - r) / dsafe + 2, (r - g) / dsafe + 4))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h * 6.0) % 6.0
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * a + (1 - f) * b).clamp(0, 1)


class TwoViewAugment:
    """Callable producing augmented, normalised float views from a uint8 batch.

    Args:
        views: one ``ViewAugment`` (or dict of its fields) per view; two for
            joint-embedding methods, asymmetric settings allowed.
        mean, std: per-channel normalisation applied last.
        seed: seeds the private generator (``generator`` state is checkpointed).
    """

    def __init__(
        self, views: Sequence[ViewAugment | dict], mean: Sequence[float], std: Sequence[float], seed: int = 0
    ) -> None:
        if not isinstance(views, (list, tuple)) or len(views) < 1:
            raise ValueError(f"views: expected a non-empty list of view settings, got {views!r}")
        self.views: List[ViewAugment] = [v if isinstance(v, ViewAugment) else ViewAugment(**v) for v in views]
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean/std: expected 3 values each and std > 0, got {mean!r}, {std!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._device_stats: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------- RNG helpers
    def _u(self, n: int, lo: float = 0.0, hi: float = 1.0, k: int | None = None) -> torch.Tensor:
        shape = (n,) if k is None else (n, k)
        return torch.rand(shape, generator=self.generator) * (hi - lo) + lo

    def _bern(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < p

    # ----------------------------------------------------------------- random parameters
    def _draw_crop_flip(self, n: int, hgt: int, wid: int, v: ViewAugment) -> torch.Tensor:
        """The (n, 2, 3) affine matrices of crop + flip, computed on the host."""
        tries = 10
        area = self._u(n, v.crop_min_scale, v.crop_max_scale, tries)
        logr = self._u(n, math.log(3 / 4), math.log(4 / 3), tries)
        ratio = torch.exp(logr) * (hgt / wid)  # ratio is in pixels; convert to fractions
        w = torch.sqrt(area * ratio)
        h = torch.sqrt(area / ratio)
        ok = (w <= 1) & (h <= 1)
        first = ok.float().argmax(1)
        anyok = ok.any(1)
        w = torch.where(anyok, w.gather(1, first[:, None])[:, 0], torch.ones(n))
        h = torch.where(anyok, h.gather(1, first[:, None])[:, 0], torch.ones(n))
        cx = torch.rand(n, generator=self.generator) * (1 - w) + w / 2
        cy = torch.rand(n, generator=self.generator) * (1 - h) + h / 2
        flip = self._bern(n, v.flip_prob)
        sx = torch.where(flip, -w, w)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = sx
        theta[:, 0, 2] = 2 * cx - 1
        theta[:, 1, 1] = h
        theta[:, 1, 2] = 2 * cy - 1
        return theta

    def _blur_kernels(self, n: int, v: ViewAugment) -> torch.Tensor:
        sigma = self._u(n, 0.1, 2.0)
        k = max(3, int(0.1 * v.crop_size) // 2 * 2 + 1)  # ~10% of the image, as in SimCLR/BYOL
        r = torch.arange(k, dtype=torch.float32) - k // 2
        ker = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
        return ker / ker.sum(1, keepdim=True)

    def _draw(
        self, n: int, hgt: int, wid: int, v: ViewAugment, crop: bool = True
    ) -> Tuple[Dict[str, torch.Tensor], List[int]]:
        """Every random parameter of one view, drawn on the host in the generator's historical order.

        ``crop=False`` (views cropped by the data loader's workers) draws no crop or flip."""
        p: Dict[str, torch.Tensor] = {"theta": self._draw_crop_flip(n, hgt, wid, v)} if crop else {}
        order: List[int] = []
        if v.jitter_prob > 0:
            p["jitter"] = self._bern(n, v.jitter_prob).float()
            p["brightness"] = self._u(n, max(0.0, 1 - v.brightness), 1 + v.brightness)
            p["contrast"] = self._u(n, max(0.0, 1 - v.contrast), 1 + v.contrast)
            p["saturation"] = self._u(n, max(0.0, 1 - v.saturation), 1 + v.saturation)
            p["hue"] = self._u(n, -v.hue, v.hue)
            order = torch.randperm(4, generator=self.generator).tolist()
        if v.gray_prob > 0:
            p["gray"] = self._bern(n, v.gray_prob).float()
        if v.blur_prob > 0:
            p["blur"] = self._bern(n, v.blur_prob).float()
            p["blur_kernel"] = self._blur_kernels(n, v)
        if v.solarize_prob > 0:
            p["solarize"] = self._bern(n, v.solarize_prob).float()
        return p, order

    @staticmethod
    def _to_device(p: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
        """One copy of all of a view's parameters, from pinned memory and without blocking on CUDA.

        A pageable host-to-device copy makes the host wait for the GPU; with
        the parameters packed in one pinned buffer the host queues the copy
        and goes on (the caching host allocator keeps the buffer until the
        copy has run).
        """
        if device.type == "cpu":
            return p
        flat = torch.cat([t.reshape(-1) for t in p.values()])
        if device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(device, non_blocking=True)
        out, at = {}, 0
        for k, t in p.items():
            out[k] = flat[at : at + t.numel()].view(t.shape)
            at += t.numel()
        return out

    # ----------------------------------------------------------------- ops
    def _crop_flip(self, x: torch.Tensor, v: ViewAugment, theta: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        grid = F.affine_grid(theta.to(x.dtype), [n, 3, v.crop_size, v.crop_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: torch.Tensor, v: ViewAugment, p: Dict[str, torch.Tensor], order: List[int]) -> torch.Tensor:
        n = x.shape[0]
        apply = (p["jitter"] > 0.5).view(n, 1, 1, 1)
        bf, cf, sf = (p[k].view(n, 1, 1, 1) for k in ("brightness", "contrast", "saturation"))
        hf = p["hue"].view(n, 1, 1)
        y = x
        for op in order:
            if op == 0 and v.brightness > 0:
                y = (y * bf).clamp(0, 1)
            elif op == 1 and v.contrast > 0:
                y = _blend(y, _gray(y).mean((2, 3), keepdim=True), cf)
            elif op == 2 and v.saturation > 0:
                y = _blend(y, _gray(y), sf)
            elif op == 3 and v.hue > 0:
                hsv = _rgb_to_hsv(y)
                hsv = torch.stack(((hsv[:, 0] + hf) % 1.0, hsv[:, 1], hsv[:, 2]), 1)
                y = _hsv_to_rgb(hsv).clamp(0, 1)
        return torch.where(apply, y, x)

    @staticmethod
    def _blur(x: torch.Tensor, p: Dict[str, torch.Tensor]) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        apply = (p["blur"] > 0.5).view(n, 1, 1, 1)
        ker = p["blur_kernel"].to(x.dtype)
        k = ker.shape[1]
        ker = ker.repeat_interleave(c, 0)  # (n*c, k)
        y = x.reshape(1, n * c, hgt, wid)
        y = F.pad(y, (k // 2, k // 2, 0, 0), mode="reflect")
        y = F.conv2d(y, ker.view(n * c, 1, 1, k), groups=n * c)
        y = F.pad(y, (0, 0, k // 2, k // 2), mode="reflect")
        y = F.conv2d(y, ker.view(n * c, 1, k, 1), groups=n * c)
        return torch.where(apply, y.view(n, c, hgt, wid), x)

    def augment_view(self, x: torch.Tensor, v: ViewAugment, crop: bool = True) -> torch.Tensor:
        """One augmented view in [0, 1] (not normalised) of a float batch in [0, 1].

        ``crop=False``: ``x`` is already this view's random resized crop (and flip)."""
        n, _, hgt, wid = x.shape
        p, order = self._draw(n, hgt, wid, v, crop)
        p = self._to_device(p, x.device)
        y = self._crop_flip(x, v, p["theta"]) if crop else x
        if v.jitter_prob > 0:
            y = self._jitter(y, v, p, order)
        if v.gray_prob > 0:
            g = (p["gray"] > 0.5).view(n, 1, 1, 1)
            y = torch.where(g, _gray(y).expand_as(y), y)
        if v.blur_prob > 0:
            y = self._blur(y, p)
        if v.solarize_prob > 0:
            s = (p["solarize"] > 0.5).view(n, 1, 1, 1)
            y = torch.where(s & (y >= 0.5), 1 - y, y)
        return y

    def _stats_on(self, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._device_stats:
            self._device_stats[key] = (self.mean.to(device), self.std.to(device))
        return self._device_stats[key]

    def __call__(self, images: torch.Tensor) -> List[torch.Tensor]:
        """Return ``len(views)`` normalised float32 views of a uint8 (N, 3, H, W) batch."""
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or images.ndim != 4
            or images.shape[1] != 3
        ):
            raise ValueError(
                f"images: expected a uint8 tensor (N, 3, H, W), got "
                f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}"
            )
        x = images.float().div_(255.0)
        mean, std = self._stats_on(x.device)
        return [(self.augment_view(x, v) - mean) / std for v in self.views]

    def after_crop(self, views: torch.Tensor) -> List[torch.Tensor]:
        """The normalised float32 views of a uint8 ``(N, V, 3, S, S)`` batch whose views the data loader's
        workers already cropped and flipped (streaming paths): the photometric rest of each view."""
        nv = len(self.views)
        if (
            not isinstance(views, torch.Tensor)
            or views.dtype != torch.uint8
            or views.ndim != 5
            or views.shape[1] != nv
            or views.shape[2] != 3
        ):
            raise ValueError(
                f"views: expected a uint8 tensor (N, {nv}, 3, S, S), got "
                f"{getattr(views, 'dtype', type(views))} {tuple(getattr(views, 'shape', ()))}"
            )
        mean, std = self._stats_on(views.device)
        out = []
        for k, v in enumerate(self.views):
            if views.shape[-1] != v.crop_size or views.shape[-2] != v.crop_size:
                raise ValueError(f"views: view {k} is {tuple(views.shape[-2:])}, its crop_size is {v.crop_size}")
            x = views[:, k].float().div_(255.0)
            out.append((self.augment_view(x, v, crop=False) - mean) / std)
        return out

    # ----------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


def prepare_eval(images: torch.Tensor, crop_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Deterministic evaluation transform: resize to ``crop_size`` if needed, normalise."""
    x = images.float().div_(255.0)
    if x.shape[-1] != crop_size or x.shape[-2] != crop_size:
        x = F.interpolate(x, size=(crop_size, crop_size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
