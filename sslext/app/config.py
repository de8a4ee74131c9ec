"""YAML run configuration with strict validation and ``--set key=value`` overrides.

A config is a nested dict shaped like ``DEFAULTS``. Any key that is not in the
schema, or a value of the wrong type/range, raises ``ConfigError`` naming the
dotted key, so a typo never silently falls back to a default. The ``method``
section accepts ``name`` plus the hyper-parameters that method declares
(``sslext.app.methods.method_defaults``).
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

from ..data.augment import ViewAugment
from .config_docs import config_markdown, meaning, missing_meanings  # noqa: F401  (public here)
from .config_schema import CHOICES, DEFAULTS, FLOATS, NONNEG, NULLABLE, POSITIVE, ConfigError
from .methods import method_defaults

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
    "config_markdown",
    "meaning",
    "missing_meanings",
]


def _suggest(key: str, options: Iterable[str]) -> str:
    m = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean '{m[0]}'?)" if m else ""


def _check_type(key: str, value: Any, default: Any) -> Any:
    if key == "train.amp":  # the one key that takes a bool or a word; true is read as bf16
        if not (isinstance(value, bool) or value in ("auto", "bf16", "fp16")):
            raise ConfigError(f"{key}: expected auto, bf16, fp16 or false (true means bf16), got {value!r}")
        return value
    expected = float if key in FLOATS else NULLABLE.get(key, type(default) if default is not None else None)
    if value is None:
        if key in NULLABLE or default is None:
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
            if key in CHOICES and v not in CHOICES[key]:
                raise ConfigError(f"{key}: expected one of {list(CHOICES[key])}, got {v!r}")
            if key in POSITIVE and v is not None and not v > 0:
                raise ConfigError(f"{key}: expected a value > 0, got {v!r}")
            if key in NONNEG and v is not None and v < 0:
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
    _check_streaming(cfg)
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


def _check_streaming(cfg: Dict[str, Any]) -> None:
    d = cfg["data"]
    if d["classes"] is not None and (
        not d["classes"]
        or not all(isinstance(c, str) and c for c in d["classes"])
        or len(set(d["classes"])) != len(d["classes"])
    ):
        raise ConfigError(f"data.classes: expected a list of distinct class folder names, got {d['classes']!r}")
    if d["classes"] is not None and d["dataset"] != "image_folder":
        raise ConfigError(f"data.classes: selects class folders of an image_folder, not of {d['dataset']!r}")
    if d["source"] == "memory":
        return
    what = f"data.source: {d['source']!r}"
    if d["dataset"] != "image_folder":
        raise ConfigError(f"{what} reads image folders; set data.dataset=image_folder (got {d['dataset']!r})")
    if d["train_limit"] is not None:
        raise ConfigError(f"data.train_limit: not supported with {what} (use data.classes or a smaller folder)")
    if cfg["eval"]["split"] == "val":
        raise ConfigError(f"eval.split: 'val' holds out in-memory training images; not supported with {what}")


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
    package = Path(__file__).resolve().parent.parent  # sslext/
    checkout = package.parent / "configs"
    return checkout if (checkout / "demo_fashion_mnist.yaml").is_file() else package / "_configs"


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
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m sslext.app.config --markdown   (prints docs/config.md)")
    print(config_markdown(), end="")
