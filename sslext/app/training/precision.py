"""``train.amp``: the autocast precision each machine trains fastest in.

``auto`` on CUDA follows the hardware: bf16 where the GPU computes it
natively (compute capability >= 8.0: A100, H100, ...), fp16 with a GradScaler
below (T4, V100: they emulate bf16 slowly, and fp16 gradients underflow without
loss scaling). On the CPU no fixed rule is right: bf16 + channels_last ran at
0.95-1.07x float32 on one Intel Xeon and 2.23x on one AMD EPYC, both with
AVX512-BF16 (docs/dev/benchmark_notes.md). So ``auto`` times a few forward + backward
passes of the run's own model both ways, keeps the faster, and caches the
answer per CPU model, torch version, thread count and workload in
``cpu_precision.json`` under the user's cache folder (``SSLEXT_CACHE_DIR``, else
``$XDG_CACHE_HOME/sslext``, else ``~/.cache/sslext``), so the measurement (eight
forward + backward passes at a batch of at most 64) is paid once per machine and
workload, not at every start.

Explicit settings: ``bf16``, ``fp16`` (with a GradScaler), ``false`` (float32);
``true`` is read as ``bf16``, what it meant before ``auto`` measured.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist

from ..config import ConfigError

__all__ = [
    "Precision",
    "resolve_precision",
    "measure_training_rate",
    "trainer_precision",
    "is_cached",
    "cache_file",
    "cpu_model",
    "BF16_MARGIN",
]

# bf16 must beat float32 by this factor to be chosen on the CPU: a few timed
# passes vary by a few percent between runs, and float32 is the exact choice.
BF16_MARGIN = 1.05
_NAMES = {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Precision:
    """What the training step runs in.

    dtype: the autocast dtype (``None``: no autocast, float32).
    scaler: whether the step needs a GradScaler (fp16: small gradients underflow without one).
    reason: why this precision was chosen, for the run's log.
    rates: images/s measured per precision name when the choice was measured (CPU ``auto``).
    """

    dtype: Optional[torch.dtype]
    scaler: bool
    reason: str
    rates: Optional[Dict[str, float]] = None

    @property
    def name(self) -> str:
        return _NAMES[self.dtype]

    def autocast(self, device_type: str) -> torch.autocast:
        """The autocast context of a training step (disabled for float32)."""
        return torch.autocast(device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def log_record(self, setting: Any) -> Dict[str, Any]:
        rec: Dict[str, Any] = {
            "kind": "precision",
            "amp": setting,
            "precision": self.name,
            "scaler": self.scaler,
            "reason": self.reason,
        }
        for k, v in (self.rates or {}).items():
            rec[f"{k}_images_per_second"] = v
        return rec


def _check_setting(setting: Any) -> Any:
    if isinstance(setting, bool) or setting in ("auto", "bf16", "fp16"):
        return setting
    raise ConfigError(f"train.amp: expected auto, bf16, fp16 or false (true means bf16), got {setting!r}")


def cpu_model() -> str:
    """The CPU's model name: keys the precision cache, and every sweep cell records it
    (float reductions differ between CPU models, so reports pair within one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file() -> Path:
    """Where CPU ``auto`` keeps its measurements: ``SSLEXT_CACHE_DIR`` or the user's cache folder."""
    base = os.environ.get("SSLEXT_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = os.path.join(xdg, "sslext") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "sslext")
    return Path(base) / "cpu_precision.json"


def _read_cache(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # absent, unreadable or corrupt: measure again
        return {}


def _write_cache(path: Path, key: str, entry: Dict[str, Any]) -> Optional[str]:
    """Add one entry (atomic replace); returns why it could not be written, if it could not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _cache_key(workload: str) -> str:
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {workload}"


def _valid(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("choice") in ("float32", "bf16")
        and all(isinstance(entry.get(k), (int, float)) for k in ("float32", "bf16"))
    )


def is_cached(workload: str) -> bool:
    """Whether CPU ``auto`` has an answer for ``workload`` on this machine (no measurement needed)."""
    return _valid(_read_cache(cache_file()).get(_cache_key(workload)))


def _cuda_precision(setting: Any, device: torch.device) -> Precision:
    major, minor = torch.cuda.get_device_capability(device)
    cc = f"compute capability {major}.{minor}"
    native_bf16 = (major, minor) >= (8, 0)
    if setting == "auto":
        if native_bf16:
            return Precision(torch.bfloat16, False, f"auto: {cc} computes bf16 natively")
        return Precision(torch.float16, True, f"auto: {cc} < 8.0 emulates bf16; fp16 with a GradScaler instead")
    if setting == "bf16":
        note = "" if native_bf16 else f" (slow: {cc} < 8.0 emulates bf16; auto would take fp16)"
        return Precision(torch.bfloat16, False, f"train.amp={setting!r}{note}")
    return Precision(torch.float16, True, f"train.amp={setting!r}: fp16 with a GradScaler")


def resolve_precision(
    setting: Any,
    device: torch.device,
    measure: Optional[Callable[[Optional[torch.dtype]], float]] = None,
    workload: str = "",
    log: Optional[Callable[[str], None]] = None,
) -> Precision:
    """``train.amp`` on ``device`` -> :class:`Precision`.

    ``measure(dtype)`` returns the training rate (images/s) with that autocast
    dtype (``None``: float32); CPU ``auto`` calls it for float32 and bf16 unless
    ``cpu_precision.json`` already holds the answer for this CPU model, torch
    version, thread count and ``workload`` (a description of the model and
    batch). Without ``measure``, CPU ``auto`` takes the cached answer, else
    float32. ``log`` receives a line when the cache cannot be written.
    """
    setting = _check_setting(setting)
    if setting is True:
        setting = "bf16"
    if setting is False:
        return Precision(None, False, "train.amp=false")
    if device.type == "cuda":
        return _cuda_precision(setting, device)
    if setting == "bf16":
        return Precision(torch.bfloat16, False, "train.amp='bf16'")
    if setting == "fp16":
        return Precision(torch.float16, True, "train.amp='fp16': fp16 with a GradScaler")
    if device.type != "cpu":
        return Precision(None, False, f"auto: float32 on {device.type}")
    cpu, key, path = cpu_model(), _cache_key(workload), cache_file()
    entry = _read_cache(path).get(key)
    cached = _valid(entry)
    if not cached and measure is None:
        return Precision(None, False, "auto: float32 on the CPU (nothing to measure with)")
    if not cached:
        assert measure is not None
        entry = {"float32": float(measure(None)), "bf16": float(measure(torch.bfloat16))}
        entry["choice"] = "bf16" if entry["bf16"] > BF16_MARGIN * entry["float32"] else "float32"
        why_not = _write_cache(path, key, {**entry, "cpu": cpu, "date": time.strftime("%Y-%m-%d")})
        if why_not and log:
            log(f"train.amp=auto: could not cache the CPU measurement in {path} ({why_not})")
    assert entry is not None
    rates = {"float32": entry["float32"], "bf16": entry["bf16"]}
    ratio = rates["bf16"] / max(rates["float32"], 1e-12)
    how = f"cached in {path}" if cached else "measured"
    reason = (
        f"auto on {cpu}: bf16 {rates['bf16']:.1f} vs float32 {rates['float32']:.1f} images/s "
        f"({ratio:.2f}x, {how}; bf16 needs > {BF16_MARGIN:.2f}x)"
    )
    dtype = torch.bfloat16 if entry["choice"] == "bf16" else None
    return Precision(dtype, False, reason, rates)


def measure_training_rate(
    method: torch.nn.Module,
    batch_shape: tuple,
    num_views: int,
    channels_last: bool,
    dtype: Optional[torch.dtype],
    steps: int = 3,
    warmup: int = 1,
) -> float:
    """Images/s of forward + backward of a copy of ``method`` on random views, under ``dtype`` autocast.

    The copy and ``fork_rng`` leave the run's weights, statistics, method state
    and random streams exactly as they were. The optimizer step is left out: it
    runs in float32 whatever the autocast.
    """
    model = copy.deepcopy(method).train()
    prec = Precision(dtype, False, "")
    times = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        views = [torch.randn(batch_shape) for _ in range(num_views)]
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            with prec.autocast("cpu"):
                loss, _ = model(views)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return batch_shape[0] / statistics.median(times)


def trainer_precision(
    cfg: Dict[str, Any], device: torch.device, method: torch.nn.Module, local_batch: int, crop_size: int, rank: int
) -> Precision:
    """The Trainer's precision: ``train.amp`` resolved, CPU ``auto`` measured with the run's
    own model as it will run (channels_last and SyncBatchNorm already applied), rank 0's answer shared."""
    t, m = cfg["train"], cfg["model"]
    shape = (min(local_batch, 64), 3, crop_size, crop_size)
    workload = (
        f"{cfg['method']['name']} {m['backbone']} w{m['width']} batch {shape[0]} {crop_size}px "
        f"{'channels_last' if t['channels_last'] else 'contiguous'}"
    )

    def measure(dtype: Optional[torch.dtype]) -> float:
        return measure_training_rate(method, shape, method.num_views, t["channels_last"], dtype)

    if (
        t["amp"] != "auto"
        or device.type != "cpu"
        or not (dist.is_available() and dist.is_initialized())
        or dist.get_world_size() == 1
    ):
        return resolve_precision(t["amp"], device, measure=measure, workload=workload)
    # Several processes: every rank must train in rank 0's precision. When it
    # has to be measured, every rank measures at once, because the model copy
    # holds collectives (SyncBatchNorm, the losses' all-gather, MoCo's queue):
    # rank 0 alone would wait for the others forever. Rank 0's rates decide.
    need = [not is_cached(workload)] if rank == 0 else [None]
    dist.broadcast_object_list(need, src=0)
    rates = {dt: measure(dt) for dt in (None, torch.bfloat16)} if need[0] else {}
    box = [
        resolve_precision("auto", device, measure=rates.get if rates else None, workload=workload)
        if rank == 0
        else None
    ]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]
