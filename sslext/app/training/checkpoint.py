"""Checkpoint I/O: the atomic write of ``last.pt``, the weights-only load, the check that a
checkpoint belongs to the config it resumes, and every rank's RNG streams.
"""

from __future__ import annotations

import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ...data import atomic_save
from ...distributed import all_gather_tensors

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointMismatchError",
    "load_checkpoint_file",
    "write_checkpoint",
    "check_resume_compatible",
    "remove_stale_temp_files",
    "RANK_SEED_STRIDE",
    "own_rng",
    "gather_rank_rng",
    "restore_rng",
    "restore_cuda_rng_states",
]

CHECKPOINT_VERSION = 1
# What every checkpoint written by Trainer.state_dict holds (newer optional keys are read with .get).
_CHECKPOINT_KEYS = (
    "config",
    "method",
    "optimizer",
    "scheduler",
    "probe",
    "probe_opt",
    "augment",
    "torch_rng",
    "cuda_rng",
    "epoch",
    "step_in_epoch",
    "global_step",
    "epoch_acc",
)

# Config keys that may differ on --resume without changing the trajectory.
_RESUME_FREE = (
    "name",
    "train.out_dir",
    "train.progress",
    "train.loggers",
    "train.log_every",
    "train.checkpoint_every",
    "train.checkpoint_every_steps",
    "train.max_steps",
    "train.on_nonfinite",
    "train.max_consecutive_skips",
    "data.root",
    "data.cache_dir",
    "data.workers",  # streaming: the batches do not depend on the workers (seeded per sample)
    "data.prefetch",
    "data.verify_shards",
    "data.download",
    "eval.",
)
_RESUME_FREE_EXCEPT = ("eval.online_probe", "eval.probe_lr")  # these shape the online probe's training
# Config keys that must match: they change tensor shapes, the optimizer state's
# layout, or what the saved data position (epoch, step) means.
_RESUME_MUST_MATCH = (
    "method.name",
    "model.",
    "seed",
    "optim.name",
    "optim.batch_size",
    "data.dataset",
    "data.train_limit",
    "data.source",  # streaming crops on the workers: another data path, another trajectory
    "data.classes",
)

# Rank r > 0 seeds its augmentation generator with seed + r * stride, so
# ranks draw different augmentations and rank 0 matches a single-process run.
RANK_SEED_STRIDE = 1_000_003


class CheckpointMismatchError(ValueError):
    """``--resume`` found a checkpoint of another method, model shape or data setup."""


def load_checkpoint_file(path: str | Path) -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` with clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    try:
        # weights_only: the unpickler only rebuilds tensors and plain containers,
        # so a crafted file cannot run code (sslext never writes anything else).
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False; name only the offending global instead.
        detail = next((l.strip().split(" was not")[0] for l in str(e).splitlines() if "Unsupported global" in l), None)
        if detail is None:  # garbled bytes, not a foreign object
            why = next((l.strip() for l in str(e).splitlines() if "Unsupported" in l), type(e).__name__)
            raise RuntimeError(f"checkpoint: {path} cannot be loaded (corrupt or not a torch file: {why})") from e
        raise RuntimeError(
            f"checkpoint: {path} was refused by torch.load(weights_only=True): it holds objects "
            f"other than tensors and plain containers, which sslext never writes; the file is "
            f"not an sslext checkpoint and is not safe to load ({detail})"
        ) from e
    except Exception as e:
        raise RuntimeError(f"checkpoint: {path} cannot be loaded ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise RuntimeError(f"checkpoint: {path} is not an sslext training checkpoint (version {CHECKPOINT_VERSION})")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise RuntimeError(f"checkpoint: {path} lacks {missing}; it is incomplete or not written by sslext-train")
    if not isinstance(ckpt["config"], dict):
        raise RuntimeError(f"checkpoint: {path} has no config mapping; it is not written by sslext-train")
    return ckpt


def write_checkpoint(state: Dict[str, Any], path: Path) -> None:
    """Replace ``path`` atomically: a reader (or a resume after SIGKILL) sees the old file or the new one."""
    atomic_save(state, path)


def remove_stale_temp_files(ckpt_path: Path) -> None:
    # A process killed inside atomic_save leaves its temp file behind; it
    # is never read, only cleaned up here.
    if ckpt_path.parent.is_dir():
        for p in ckpt_path.parent.glob(f".{ckpt_path.name}.*.tmp"):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- resume compatibility
def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}" != "method.projector":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _shape_mismatches(saved: Dict[str, Any], current: Dict[str, Any], what: str) -> List[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        if k not in current:
            out.append(f"{what}.{k} is in the checkpoint but not in the model built from the config")
        elif k not in saved:
            out.append(f"{what}.{k} is missing from the checkpoint")
        else:
            a, b = saved[k], current[k]
            # An empty current buffer is allocated lazily and takes any saved shape.
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and b.numel() and a.shape != b.shape:
                out.append(f"{what}.{k}: shape {tuple(a.shape)} in the checkpoint, {tuple(b.shape)} now")
    return out


def check_resume_compatible(
    ckpt: Dict[str, Any], path: Path, cfg: Dict[str, Any], current: Dict[str, Dict[str, Any]], run_dir: Path
) -> None:
    """Refuse a checkpoint of another method/shape/data setup, naming what differs.

    ``current`` maps the checkpoint's state-dict entries (``method``,
    ``probe``) to the state dicts of the modules built from ``cfg``. A config
    that differs only in keys that keep the trajectory (output paths, logging,
    evaluation) resumes silently; other harmless differences give a warning.
    """
    old, new = _flatten(ckpt["config"]), _flatten(cfg)
    absent = "<absent>"
    differ = sorted(k for k in set(old) | set(new) if old.get(k, absent) != new.get(k, absent))
    problems = [
        f"{k}: {old.get(k, absent)!r} in the checkpoint, {new.get(k, absent)!r} in the config"
        for k in differ
        if _matches(k, _RESUME_MUST_MATCH)
    ]
    shapes = []
    if old.get("method.name") == new.get("method.name"):
        shapes = [m for what, sd in current.items() for m in _shape_mismatches(ckpt[what], sd, what)]
    if shapes:
        listed = {p.split(":")[0] for p in problems}
        problems += [
            f"{k}: {old.get(k, absent)!r} in the checkpoint, {new.get(k, absent)!r} in the config"
            for k in differ
            if _matches(k, ("method.", "model.", "data.", "eval.")) and k not in listed
        ]
        more = f" (and {len(shapes) - 8} more)" if len(shapes) > 8 else ""
        problems.append("tensor shapes differ: " + "; ".join(shapes[:8]) + more)
    if problems:
        raise CheckpointMismatchError(
            f"--resume: checkpoint {path} does not belong to this config:\n  "
            + "\n  ".join(problems)
            + f"\nResume with the run's own config (--config {run_dir / 'config.yaml'}), or start a new "
            "run (another `name` or `train.out_dir`)."
        )
    changed = [k for k in differ if not (_matches(k, _RESUME_FREE) and k not in _RESUME_FREE_EXCEPT)]
    if changed:
        warnings.warn(
            f"--resume: the config differs from the checkpoint's in {changed}; the resumed run "
            "continues with the new values and will not match an uninterrupted run",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------- RNG streams
def own_rng(augment: Any, device: torch.device) -> Dict[str, torch.Tensor]:
    """This process's RNG streams: its augmentation generator, torch's, and its GPU's."""
    st = {"augment": augment.generator.get_state(), "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda_rng"] = torch.cuda.get_rng_state(device)
    return st


def gather_rank_rng(augment: Any, device: torch.device, world_size: int) -> Optional[List[Dict[str, torch.Tensor]]]:
    """Every rank's RNG streams, in rank order (a collective: all ranks call it); None in one process."""
    if world_size == 1:
        return None
    own = own_rng(augment, device)
    per_key = {k: all_gather_tensors(v) for k, v in own.items()}
    return [{k: per_key[k][r] for k in own} for r in range(world_size)]


def restore_cuda_rng_states(states: Sequence[torch.Tensor]) -> Optional[str]:
    """Put the saved per-GPU CUDA RNG states back on the GPUs visible now.

    A checkpoint written where more GPUs were visible holds more states than
    there are GPUs here (``torch.cuda.set_rng_state_all`` would raise): the
    first ones are restored and the rest are dropped. Returns what was done
    when the counts differ, else None.
    """
    if not states:
        return None
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n = min(len(states), visible)
    for i in range(n):
        torch.cuda.set_rng_state(states[i], i)
    if len(states) == visible:
        return None
    if n == 0:
        return f"the checkpoint holds the CUDA RNG states of {len(states)} GPU(s); no GPU is visible: none restored"
    if len(states) > visible:
        return (
            f"the checkpoint holds the CUDA RNG states of {len(states)} GPUs, {visible} visible here: restored "
            f"the states of GPUs 0-{n - 1} and dropped those of GPUs {n}-{len(states) - 1}"
        )
    return (
        f"the checkpoint holds the CUDA RNG states of {len(states)} GPU(s), {visible} visible here: restored "
        f"GPUs 0-{n - 1}; GPUs {n}-{visible - 1} keep their own"
    )


def restore_rng(
    ckpt: Dict[str, Any],
    augment: Any,
    device: torch.device,
    rank: int,
    world_size: int,
    seed: int,
    global_step: int,
    main: bool,
) -> Optional[str]:
    """Put back this rank's RNG streams; re-seed them deterministically under another world size.

    Returns a note (also printed by the main process) when the saved CUDA RNG
    states did not match the GPUs visible here.
    """
    rank_rng = ckpt.get("rank_rng")
    saved_world = ckpt.get("world_size", 1)
    if saved_world == world_size and (world_size == 1 or rank_rng is not None):
        own = (
            rank_rng[rank]
            if world_size > 1
            else {"augment": ckpt["augment"]["generator"], "torch_rng": ckpt["torch_rng"]}
        )
        augment.generator.set_state(own["augment"])
        torch.set_rng_state(own["torch_rng"])
        note = None
        if world_size == 1:
            note = restore_cuda_rng_states(ckpt["cuda_rng"])
            if note and main:
                print(f"sslext-train: note: {note}", file=sys.stderr)
        elif "cuda_rng" in own and device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda_rng"], device)
        return note
    # Another world size: the per-rank augmentation streams of the saved run
    # do not exist here. Derive fresh ones from (seed, step, rank) so the
    # resume is still deterministic, and say that it is not bit-exact.
    s = (seed * RANK_SEED_STRIDE + global_step) * 8191 + rank
    augment.generator.manual_seed(s % (2**63))
    torch.manual_seed(s % (2**63))
    if main:
        print(
            f"sslext-train: warning: checkpoint written by {saved_world} process(es), resuming with "
            f"{world_size}: model, optimizer, schedule and data position restored, augmentation RNG "
            "re-seeded from (seed, step, rank): not bit-identical to an uninterrupted run",
            file=sys.stderr,
        )
