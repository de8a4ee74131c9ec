"""YAML run configuration with strict validation and ``--set key=value`` overrides.

A config is a nested dict shaped like ``DEFAULTS``. Any key that is not in the
schema, or a value of the wrong type/range, raises ``ConfigError`` naming the
dotted key, so a typo never silently falls back to a default. The ``method``
section accepts ``name`` plus the hyper-parameters that method declares
(``sslext.methods.method_defaults``).
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

from .data.augment import ViewAugment

__all__ = [
    "ConfigError",
    "DEFAULTS",
    "load_config",
    "resolve_config_path",
    "shipped_configs_dir",
    "read_yaml_mapping",
    "apply_override",
    "validate",
    "dump_config",
]


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key."""


_VIEW = {f.name: f.default for f in fields(ViewAugment)}

DEFAULTS: Dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "method": {"name": "vicreg"},
    "model": {"backbone": "resnet18", "cifar_stem": True, "width": 64},
    "data": {
        "dataset": "cifar10",
        "root": None,
        "download": False,
        "image_size": 32,
        "cache_dir": None,
        "train_limit": None,
        "test_limit": None,
        "mean": None,
        "std": None,
        "variant": "160px",
        "on_bad_image": "error",
    },
    "augment": {"view1": dict(_VIEW), "view2": {**_VIEW, "solarize_prob": 0.2}},
    "optim": {
        "name": "lars",
        "batch_size": 256,
        "lr": 0.3,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "eta": 0.02,
        "clip_lr": True,
        "exclude_bias_norm": True,
        "warmup_epochs": 10,
        "warmup_start_factor": 0.0,
        "final_lr_factor": 0.0,
    },
    "train": {
        "epochs": 1000,
        "max_steps": None,
        "device": "auto",
        "amp": "auto",
        "channels_last": True,
        "out_dir": "runs",
        "checkpoint_every": 1,
        "checkpoint_every_steps": None,
        "log_every": 20,
        "progress": True,
        "threads": None,
        "on_nonfinite": "stop",
        "max_consecutive_skips": 10,
        "loggers": ["jsonl", "csv"],
        "compile": False,
    },
    "distributed": {"sync_batchnorm": True, "find_unused_parameters": False},
    "eval": {
        "online_probe": True,
        "probe_lr": 0.1,
        "every": 1,
        "knn_k": 200,
        "knn_t": 0.1,
        "knn_train_limit": 10000,
        "diag_samples": 2048,
        "batch_size": 512,
        "final": True,
        "offline_epochs": 100,
        "offline_lr": 0.01,
        "label_fraction": 0.1,
        "split": "test",
        "val_fraction": 0.1,
        "val_seed": 0,
    },
}

# Keys whose default is None, with the type they take when set.
_NULLABLE = {
    "data.root": str,
    "data.cache_dir": str,
    "data.train_limit": int,
    "data.test_limit": int,
    "data.mean": list,
    "data.std": list,
    "train.max_steps": int,
    "train.threads": int,
    "train.checkpoint_every_steps": int,
    "eval.knn_train_limit": int,
}
# Keys that take a fraction although their default is a whole number: a budget
# sweep scales the warm-up with the epochs (10 epochs -> 10/3 warm-up epochs).
_FLOATS = {"optim.warmup_epochs"}

_CHOICES = {
    "optim.name": ("lars", "sgd", "adam", "adamw"),
    "data.dataset": ("cifar10", "cifar100", "fashion_mnist", "image_folder", "imagenette", "imagewoof", "synthetic"),
    "data.variant": ("full", "320px", "160px"),
    "data.on_bad_image": ("error", "skip"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.on_nonfinite": ("stop", "skip"),
    "eval.split": ("test", "val"),
}
_POSITIVE = {
    "optim.batch_size",
    "optim.lr",
    "optim.eta",
    "train.epochs",
    "train.max_steps",
    "train.checkpoint_every",
    "train.checkpoint_every_steps",
    "train.max_consecutive_skips",
    "train.log_every",
    "eval.probe_lr",
    "eval.every",
    "eval.knn_k",
    "eval.knn_t",
    "eval.diag_samples",
    "eval.batch_size",
    "eval.offline_epochs",
    "eval.offline_lr",
    "data.image_size",
    "model.width",
    "data.train_limit",
    "data.test_limit",
    "eval.knn_train_limit",
    "train.threads",
}
_NONNEG = {
    "optim.weight_decay",
    "optim.momentum",
    "optim.warmup_epochs",
    "optim.warmup_start_factor",
    "optim.final_lr_factor",
    "seed",
}


# Every key of DEFAULTS, with one line on what it does: docs/config.md is
# generated from this (python -m sslext.config --markdown), and docs-check
# fails when a key has no meaning or the page is stale.
MEANINGS: Dict[str, str] = {
    "name": "run name: the run directory is `train.out_dir/name`",
    "seed": "seeds network init, data order, augmentation and the probe's label subset",
    "model.backbone": "backbone network: resnet10, resnet18, resnet34, resnet50, or timm/<name> (`pip install 'sslext[timm]'`)",
    "model.cifar_stem": "3x3 stride-1 first convolution and no max-pool, for 32 px images",
    "model.width": "channels of the first stage (64 = the standard ResNet; the CPU study uses 16)",
    "data.dataset": "which dataset to pretrain and evaluate on",
    "data.root": "folder holding the dataset (its standard layout, see docs/data.md)",
    "data.download": "fetch the dataset into `data.root` when it is missing (torchvision's downloader, checksummed)",
    "data.image_size": "side the images are stored at (image folders are resized to it)",
    "data.cache_dir": "where decoded image folders are cached (default `data.root/.sslext_cache`)",
    "data.train_limit": "use only the first N training images (null: all)",
    "data.test_limit": "use only the first N test images (null: all)",
    "data.mean": "per-channel normalisation mean (null: the dataset's standard statistics)",
    "data.std": "per-channel normalisation standard deviation (null: the dataset's standard statistics)",
    "data.variant": "Imagenette/Imagewoof archive: full, 320px or 160px",
    "data.on_bad_image": "an unreadable image file: stop with its path (error) or leave it out and report it (skip)",
    "optim.name": "optimizer: lars, sgd, adam or adamw",
    "optim.batch_size": "global batch size, split over the processes of a distributed run",
    "optim.lr": "peak learning rate (after warm-up)",
    "optim.weight_decay": "weight decay",
    "optim.momentum": "momentum (lars, sgd)",
    "optim.eta": "LARS trust coefficient",
    "optim.clip_lr": "LARS: clip the trust ratio at 1 (solo-learn's `clip_lr`)",
    "optim.exclude_bias_norm": "no weight decay (and no LARS scaling) for biases and normalisation parameters",
    "optim.warmup_epochs": "linear warm-up length in epochs (a fraction is allowed)",
    "optim.warmup_start_factor": "warm-up starts at this multiple of `optim.lr`",
    "optim.final_lr_factor": "cosine schedule ends at this multiple of `optim.lr`",
    "train.epochs": "training epochs (each a pass over the training set, last partial batch dropped)",
    "train.max_steps": "stop after this many optimizer steps, checkpointed and resumable (null: no limit)",
    "train.device": "auto (CUDA when available), cpu or cuda",
    "train.amp": "autocast: auto (GPU: bf16 from compute capability 8.0, else fp16 + GradScaler; CPU: the faster of float32 and bf16, measured once per CPU model), bf16, fp16, false; true = bf16",
    "train.channels_last": "channels-last memory format for the network (faster convolutions on CPU and GPU)",
    "train.out_dir": "parent folder of run directories",
    "train.checkpoint_every": "save `last.pt` every N epochs (and at the end)",
    "train.checkpoint_every_steps": "also save every N optimizer steps (null: per epoch only)",
    "train.log_every": "write a step record (loss, terms, lr) every N steps; the only host reads of the loss",
    "train.progress": "show a progress bar on the main process",
    "train.threads": "CPU threads torch uses (null: torch's default)",
    "train.on_nonfinite": "a non-finite loss or gradient: stop (exit 3) or skip the step",
    "train.compile": "torch.compile the method's forward and loss (same results as eager within float tolerance)",
    "train.loggers": "where metrics go: jsonl (always), csv, tensorboard (needs `pip install 'sslext[tensorboard]'`)",
    "train.max_consecutive_skips": "with on_nonfinite=skip, stop after this many skipped steps in a row",
    "distributed.sync_batchnorm": "synchronise BatchNorm statistics across processes",
    "distributed.find_unused_parameters": "DDP's find_unused_parameters (only for methods with unused branches)",
    "eval.online_probe": "train a linear probe on detached features during pretraining",
    "eval.probe_lr": "online probe learning rate (SGD, momentum 0.9)",
    "eval.every": "evaluate (kNN, online probe, RankMe) every N epochs",
    "eval.knn_k": "neighbours of the weighted kNN classifier",
    "eval.knn_t": "temperature of the weighted kNN classifier",
    "eval.knn_train_limit": "training images in the per-epoch kNN bank (null: all; the final kNN uses all)",
    "eval.diag_samples": "samples for the per-epoch collapse diagnostics (RankMe, dead dimensions)",
    "eval.batch_size": "batch size of feature extraction",
    "eval.final": "evaluate the frozen backbone at the end (linear probes, kNN, spectra)",
    "eval.offline_epochs": "epochs of the final linear probes",
    "eval.offline_lr": "learning rate of the final linear probes",
    "eval.label_fraction": "fraction of the labels for the second final probe (stratified, seeded)",
    "eval.split": "evaluate on the test split, or on a held-out part of the training set (val) for tuning",
    "eval.val_fraction": "with split=val: the fraction of training images held out (stratified)",
    "eval.val_seed": "with split=val: seeds which images are held out (independent of `seed`)",
    "augment.VIEW.crop_size": "random-resized-crop output side in pixels",
    "augment.VIEW.crop_min_scale": "smallest crop area, as a fraction of the image",
    "augment.VIEW.crop_max_scale": "largest crop area, as a fraction of the image",
    "augment.VIEW.flip_prob": "probability of a horizontal flip",
    "augment.VIEW.jitter_prob": "probability of colour jitter",
    "augment.VIEW.brightness": "colour jitter: brightness strength",
    "augment.VIEW.contrast": "colour jitter: contrast strength",
    "augment.VIEW.saturation": "colour jitter: saturation strength",
    "augment.VIEW.hue": "colour jitter: hue strength (at most 0.5)",
    "augment.VIEW.gray_prob": "probability of converting to grayscale",
    "augment.VIEW.blur_prob": "probability of a Gaussian blur",
    "augment.VIEW.solarize_prob": "probability of solarisation",
}


def _leaf_keys(d: Dict[str, Any], prefix: str = "") -> Iterable[tuple]:
    for k, v in d.items():
        if isinstance(v, dict) and k != "method":
            yield from _leaf_keys(v, f"{prefix}{k}.")
        elif k != "method":
            yield f"{prefix}{k}", v


def meaning(key: str) -> Optional[str]:
    """The one-line meaning of a dotted config key (``augment.view2.hue`` included)."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "augment":
        key = f"augment.VIEW.{parts[2]}"
    return MEANINGS.get(key)


def _type_name(key: str, default: Any) -> str:
    if key == "train.amp":
        return "auto \\| bf16 \\| fp16 \\| false \\| true"
    if key in _CHOICES:
        return " \\| ".join(str(c) for c in _CHOICES[key])
    t = float if key in _FLOATS else _NULLABLE.get(key, type(default) if default is not None else None)
    name = {int: "int", float: "number", bool: "bool", str: "string", list: "list", dict: "mapping"}.get(t, "any")
    return name + (" or null" if key in _NULLABLE else "")


def config_markdown() -> str:
    """docs/config.md: every key with its type, default and meaning, generated from
    ``DEFAULTS``, ``MEANINGS`` and each method's ``DEFAULTS`` / ``HELP``."""
    from .methods import METHODS

    def cell(v: Any) -> str:
        return "`" + yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip() + "`"

    out = [
        "# Configuration keys",
        "",
        "Generated from `sslext/config.py` and the methods' `DEFAULTS`/`HELP` by",
        "`python -m sslext.config --markdown > docs/config.md`; `make docs-check` fails when",
        "this page is stale. A config file is YAML shaped like these dotted keys; `--set KEY=VALUE`",
        "overrides one (the value parsed as YAML), `--print-config` prints the resolved config.",
        "Unknown keys, wrong types and out-of-range values are refused with the key named.",
        "",
    ]
    sections: Dict[str, List[tuple]] = {}
    for key, default in _leaf_keys(DEFAULTS):
        if key.startswith("augment.view2."):
            continue  # one table serves both views
        sec = key.split(".")[0] if "." in key else "run"
        sections.setdefault(sec, []).append((key.replace("augment.view1.", "augment.VIEW."), default))
    for sec, rows in sections.items():
        out += [f"## `{sec}`" if sec != "run" else "## Top level", ""]
        if sec == "augment":
            out += [
                "`VIEW` is `view1` or `view2` (single-view methods use `view1` only). Defaults: "
                f"view1 as listed, view2 the same except solarize_prob "
                f"{DEFAULTS['augment']['view2']['solarize_prob']}.",
                "",
            ]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, default in rows:
            real = key.replace("VIEW", "view1")
            out.append(f"| `{key}` | {_type_name(real, default)} | {cell(default)} | {meaning(real)} |")
        out.append("")
    out += [
        "## `method`",
        "",
        "`method.name` picks the method; the other keys are that method's own "
        "(setting `method.name` starts its section from these defaults).",
        "",
    ]
    for name in sorted(METHODS):
        cls = METHODS[name]
        out += [f"### `method.name: {name}`", "", "| key | default | meaning |", "|---|---|---|"]
        for k, v in cls.DEFAULTS.items():
            out.append(f"| `method.{k}` | {cell(v)} | {cls.HELP.get(k)} |")
        out.append("")
    return "\n".join(out)


def missing_meanings() -> List[str]:
    """Keys of the schema without a one-line meaning (docs-check fails on any)."""
    from .methods import METHODS

    miss = [k for k, _ in _leaf_keys(DEFAULTS) if not meaning(k)]
    miss += [f"method.{k} ({n})" for n, cls in METHODS.items() for k in cls.DEFAULTS if not cls.HELP.get(k)]
    return miss


def _suggest(key: str, options: Iterable[str]) -> str:
    m = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{m[0]}'?)" if m else ""


def _check_type(key: str, value: Any, default: Any) -> Any:
    if key == "train.amp":  # the one key that takes a bool or a word; true is read as bf16
        if not (isinstance(value, bool) or value in ("auto", "bf16", "fp16")):
            raise ConfigError(f"{key}: expected auto, bf16, fp16 or false (true means bf16), got {value!r}")
        return value
    expected = float if key in _FLOATS else _NULLABLE.get(key, type(default) if default is not None else None)
    if value is None:
        if key in _NULLABLE or default is None:
            return None
        raise ConfigError(f"{key}: must not be null (expected {type(default).__name__})")
    if expected is None:
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    elif expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    elif expected is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
    elif expected is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _method_schema(cfg: Dict[str, Any]) -> Dict[str, Any]:
    from .methods import method_defaults

    name = cfg.get("method", {}).get("name", "vicreg")
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected a string, got {name!r}")
    try:
        return {"name": name, **method_defaults(name)}
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _merge(dst: Dict[str, Any], src: Dict[str, Any], schema: Dict[str, Any], prefix: str) -> None:
    if not isinstance(src, dict):
        raise ConfigError(f"{prefix.rstrip('.') or '<root>'}: expected a mapping, got {src!r}")
    for k, v in src.items():
        key = f"{prefix}{k}"
        if k not in schema:
            raise ConfigError(f"{key}: unknown config key{_suggest(k, schema)}; valid keys here: {sorted(schema)}")
        if isinstance(schema[k], dict) and not (key == "method"):
            _merge(dst.setdefault(k, {}), v, schema[k], key + ".")
        elif key == "method":
            cur = dst.setdefault(k, {})
            merged = {**cur, **(v if isinstance(v, dict) else {})}
            _merge(cur, v, _method_schema({"method": merged}), "method.")
        else:
            dst[k] = _check_type(key, v, schema[k])


def apply_override(cfg: Dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=value`` override in place (value parsed as YAML)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"--set: expected KEY=VALUE (e.g. optim.lr=0.1), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({e})") from None
    parts = key.split(".")
    nested: Any = value
    for p in reversed(parts):
        nested = {p: nested}
    if parts == ["method", "name"]:
        # Switching method drops the previous method's hyper-parameters.
        cfg["method"] = {}
    _merge(cfg, nested, DEFAULTS, "")


def validate(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Fill method defaults and check value ranges; returns ``cfg``."""
    mschema = _method_schema(cfg)
    for k, v in mschema.items():
        cfg["method"].setdefault(k, copy.deepcopy(v))

    def walk(d: Dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key != "method":
                walk(v, key + ".")
                continue
            if key in _CHOICES and v not in _CHOICES[key]:
                raise ConfigError(f"{key}: expected one of {list(_CHOICES[key])}, got {v!r}")
            if key in _POSITIVE and v is not None and not v > 0:
                raise ConfigError(f"{key}: expected a value > 0, got {v!r}")
            if key in _NONNEG and v is not None and v < 0:
                raise ConfigError(f"{key}: expected a value >= 0, got {v!r}")

    walk(cfg, "")
    for view in ("view1", "view2"):
        try:
            ViewAugment(**cfg["augment"][view])
        except ValueError as e:
            raise ConfigError(f"augment.{view}.{e}") from None
    for k in ("mean", "std"):
        v = cfg["data"][k]
        if v is not None and (len(v) != 3 or not all(isinstance(x, (int, float)) for x in v)):
            raise ConfigError(f"data.{k}: expected a list of 3 numbers, got {v!r}")
    _check_loggers(cfg["train"]["loggers"])
    if cfg["optim"]["warmup_epochs"] > cfg["train"]["epochs"]:
        raise ConfigError(
            f"optim.warmup_epochs: expected <= train.epochs ({cfg['train']['epochs']}), "
            f"got {cfg['optim']['warmup_epochs']}"
        )
    for k in ("label_fraction", "val_fraction"):
        if not 0 < cfg["eval"][k] <= 1:
            raise ConfigError(f"eval.{k}: expected in (0, 1], got {cfg['eval'][k]}")
    if cfg["eval"]["split"] == "val" and cfg["eval"]["val_fraction"] == 1:
        raise ConfigError("eval.val_fraction: 1 would leave no labelled training images to evaluate with")
    for k in ("method.projector",):
        sec, name = k.split(".")
        if name in cfg[sec]:
            v = cfg[sec][name]
            if (
                not isinstance(v, list)
                or not v
                or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
            ):
                raise ConfigError(f"{k}: expected a non-empty list of positive ints, got {v!r}")
    return cfg


def _check_loggers(v: Any) -> None:
    # metrics.jsonl is the run's own record: resume and the report read it.
    if not (
        isinstance(v, list)
        and all(isinstance(x, str) for x in v)
        and len(set(v)) == len(v)
        and "jsonl" in v
        and set(v) <= {"jsonl", "csv", "tensorboard"}
    ):
        raise ConfigError(
            f"train.loggers: expected a list holding 'jsonl' and any of 'csv', 'tensorboard', each once, got {v!r}"
        )
    if "tensorboard" in v and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "train.loggers: 'tensorboard' needs the tensorboard package: "
            "pip install 'sslext[tensorboard]' (or pip install tensorboard)"
        )


def read_yaml_mapping(path: str | Path, what: str) -> Dict[str, Any]:
    """The mapping a YAML file holds (``yaml.safe_load``: no object tags), or a
    ``ConfigError`` that starts with ``what`` (the option that named the file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {p} is not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {p} must hold a mapping at the top level")
    return data


def shipped_configs_dir() -> Path:
    """Where the shipped recipes live: ``configs/`` of a source checkout, else the copy
    an installed package carries (``sslext/_configs``, written by setup.py)."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    return checkout if (checkout / "demo_fashion_mnist.yaml").is_file() else here / "_configs"


def resolve_config_path(spec: str | Path, what: str = "--config") -> Path:
    """A config file's path: ``spec`` itself when that file exists, else the shipped
    config of that name (``vicreg_resnet18_cifar10``, ``sweeps/seed_question_cpu``,
    with or without ``.yaml``); a ``ConfigError`` naming ``what`` and the choices otherwise."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    shipped = shipped_configs_dir()
    name = str(spec).removeprefix("configs/")
    for cand in (shipped / name, shipped / f"{name}.yaml"):
        if cand.is_file():
            return cand
    names = sorted(str(c.relative_to(shipped))[:-5] for c in shipped.rglob("*.yaml"))
    raise ConfigError(f"{what}: {spec!r} is neither a file nor a shipped config; shipped: {names}")


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Defaults <- YAML file at ``path`` <- ``overrides``; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        data = read_yaml_mapping(resolve_config_path(path), "--config")
        cfg["method"] = {}
        _merge(cfg, data, DEFAULTS, "")
        cfg["method"].setdefault("name", "vicreg")
    for item in overrides or []:
        apply_override(cfg, item)
    return validate(cfg)


def dump_config(cfg: Dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m sslext.config --markdown   (prints docs/config.md)")
    print(config_markdown(), end="")
