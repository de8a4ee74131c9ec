"""docs/config.md, generated from the schema (``DEFAULTS``, ``MEANINGS``) and each method's ``DEFAULTS`` / ``HELP``.

``python -m sslext.app.config --markdown`` prints it; docs-check fails when a key has no meaning or the page is stale.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import yaml

from .config_schema import CHOICES, DEFAULTS, FLOATS, MEANINGS, NULLABLE
from .methods import METHODS

__all__ = ["config_markdown", "meaning", "missing_meanings"]


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
    if key in CHOICES:
        return " \\| ".join(str(c) for c in CHOICES[key])
    t = float if key in FLOATS else NULLABLE.get(key, type(default) if default is not None else None)
    name = {int: "int", float: "number", bool: "bool", str: "string", list: "list", dict: "mapping"}.get(t, "any")
    return name + (" or null" if key in NULLABLE else "")


def config_markdown() -> str:
    """docs/config.md: every key with its type, default and meaning, generated from
    ``DEFAULTS``, ``MEANINGS`` and each method's ``DEFAULTS`` / ``HELP``."""

    def cell(v: Any) -> str:
        return "`" + yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").strip() + "`"

    out = [
        "# Configuration keys",
        "",
        "Generated from `sslext/app/config_schema.py` and the methods' `DEFAULTS`/`HELP` by",
        "`python -m sslext.app.config --markdown > docs/config.md`; `make docs-check` fails when",
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
    miss = [k for k, _ in _leaf_keys(DEFAULTS) if not meaning(k)]
    miss += [f"method.{k} ({n})" for n, cls in METHODS.items() for k in cls.DEFAULTS if not cls.HELP.get(k)]
    return miss
