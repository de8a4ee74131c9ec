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
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

from .data.augment import ViewAugment

__all__ = ["ConfigError", "DEFAULTS", "load_config", "read_yaml_mapping", "apply_override", "validate", "dump_config"]


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key."""


_VIEW = {f.name: f.default for f in fields(ViewAugment)}

DEFAULTS: Dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "method": {"name": "vicreg"},
    "model": {"backbone": "resnet18", "cifar_stem": True, "width": 64},
    "data": {"dataset": "cifar10", "root": None, "download": False, "image_size": 32, "cache_dir": None,
             "train_limit": None, "test_limit": None, "mean": None, "std": None, "variant": "160px",
             "on_bad_image": "error"},
    "augment": {"view1": dict(_VIEW), "view2": {**_VIEW, "solarize_prob": 0.2}},
    "optim": {"name": "lars", "batch_size": 256, "lr": 0.3, "weight_decay": 1e-4, "momentum": 0.9, "eta": 0.02,
              "clip_lr": True, "exclude_bias_norm": True, "warmup_epochs": 10, "warmup_start_factor": 0.0,
              "final_lr_factor": 0.0},
    "train": {"epochs": 1000, "max_steps": None, "device": "auto", "amp": "auto", "channels_last": True,
              "out_dir": "runs", "checkpoint_every": 1, "checkpoint_every_steps": None, "log_every": 20,
              "progress": True, "threads": None, "on_nonfinite": "stop", "max_consecutive_skips": 10,
              "compile": False},
    "distributed": {"sync_batchnorm": True, "find_unused_parameters": False},
    "eval": {"online_probe": True, "probe_lr": 0.1, "every": 1, "knn_k": 200, "knn_t": 0.1,
             "knn_train_limit": 10000, "diag_samples": 2048, "batch_size": 512, "final": True,
             "offline_epochs": 100, "offline_lr": 0.01, "label_fraction": 0.1},
}

# Keys whose default is None, with the type they take when set.
_NULLABLE = {
    "data.root": str, "data.cache_dir": str, "data.train_limit": int, "data.test_limit": int,
    "data.mean": list, "data.std": list, "train.max_steps": int, "train.threads": int,
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
}
_POSITIVE = {"optim.batch_size", "optim.lr", "optim.eta", "train.epochs", "train.max_steps", "train.checkpoint_every",
             "train.checkpoint_every_steps", "train.max_consecutive_skips", "train.log_every", "eval.probe_lr",
             "eval.every", "eval.knn_k", "eval.knn_t", "eval.diag_samples",
             "eval.batch_size", "eval.offline_epochs", "eval.offline_lr", "data.image_size", "model.width",
             "data.train_limit", "data.test_limit", "eval.knn_train_limit", "train.threads"}
_NONNEG = {"optim.weight_decay", "optim.momentum", "optim.warmup_epochs", "optim.warmup_start_factor",
           "optim.final_lr_factor", "seed"}


def _suggest(key: str, options: Iterable[str]) -> str:
    m = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{m[0]}'?)" if m else ""


def _check_type(key: str, value: Any, default: Any) -> Any:
    if key == "train.amp":  # the one key that takes a bool or a word
        if not (isinstance(value, bool) or value == "auto"):
            raise ConfigError(f"{key}: expected true, false or auto, got {value!r}")
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
    if cfg["optim"]["warmup_epochs"] > cfg["train"]["epochs"]:
        raise ConfigError(f"optim.warmup_epochs: expected <= train.epochs ({cfg['train']['epochs']}), "
                          f"got {cfg['optim']['warmup_epochs']}")
    if not 0 < cfg["eval"]["label_fraction"] <= 1:
        raise ConfigError(f"eval.label_fraction: expected in (0, 1], got {cfg['eval']['label_fraction']}")
    for k in ("method.projector",):
        sec, name = k.split(".")
        if name in cfg[sec]:
            v = cfg[sec][name]
            if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
                raise ConfigError(f"{k}: expected a non-empty list of positive ints, got {v!r}")
    return cfg


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


def load_config(path: Optional[str | Path] = None, overrides: Optional[List[str]] = None) -> Dict[str, Any]:
    """Defaults <- YAML file at ``path`` <- ``overrides``; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        data = read_yaml_mapping(path, "--config")
        cfg["method"] = {}
        _merge(cfg, data, DEFAULTS, "")
        cfg["method"].setdefault("name", "vicreg")
    for item in overrides or []:
        apply_override(cfg, item)
    return validate(cfg)


def dump_config(cfg: Dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
