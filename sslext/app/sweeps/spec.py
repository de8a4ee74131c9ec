"""A sweep file: its schema, its rows and the cells they expand to (:func:`load_sweep`).

Reading a sweep validates it whole (every cell's training config included)
before anything trains; :mod:`.run` runs the cells, :mod:`.report` reads their records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..config import ConfigError, load_config, read_yaml_mapping, resolve_config_path

__all__ = ["Sweep", "Cell", "load_sweep"]

_KEYS = {"name", "base", "set", "budget", "seeds", "rows", "compare", "runs_dir", "results_dir", "description"}
_ROW_KEYS = {"name", "set", "train", "label", "baseline"}


@dataclass
class Cell:
    name: str
    row: str
    seed: int
    train: bool
    overrides: List[str]


@dataclass
class Sweep:
    path: Path
    name: str
    base: Optional[Path]
    rows: List[Dict[str, Any]]
    seeds: List[int]
    epochs: Optional[int]
    overrides: List[str]
    runs_dir: Path
    results_dir: Path
    baseline: Optional[str] = None
    description: str = ""
    out: Optional[str] = None  # the --out it was loaded with, handed to each cell's process
    extra: List[str] = field(default_factory=list)  # the --set overrides, likewise
    cells: List[Cell] = field(default_factory=list)
    pairs: List[List[str]] = field(default_factory=list)  # compare.pairs: further [row, baseline] comparisons

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise ConfigError(f"--only: no cell or row named {name!r}; cells: {[c.name for c in self.cells]}")

    def record_path(self, cell: Cell) -> Path:
        return self.results_dir / "cells" / f"{cell.name}.json"

    def run_dir(self, cell: Cell) -> Path:
        return self.runs_dir / cell.name

    def config(self, cell: Cell) -> Dict[str, Any]:
        """The validated training config of one cell."""
        return load_config(self.base, cell.overrides)


def _as_overrides(mapping: Any, where: str) -> List[str]:
    if mapping is None:
        return []
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values, got {mapping!r}")
    out: List[str] = []
    for k, v in mapping.items():
        # A nested mapping means its keys, as in a training config: {method: {name: simclr,
        # temperature: 0.2}} is method.name=simclr then method.temperature=0.2, so a row
        # can switch method (which drops the base's method keys) and set the new one's.
        if isinstance(v, dict) and v:
            out += _as_overrides({f"{k}.{kk}": vv for kk, vv in v.items()}, where)
        else:
            out.append(f"{k}={_yaml_value(v)}")
    return out


def _yaml_value(v: Any) -> str:
    """``v`` as the YAML text apply_override parses back to ``v`` (JSON's 1e+30
    would come back a string: YAML 1.1 floats need a dot)."""
    text = yaml.safe_dump(v, default_flow_style=True, width=1 << 30).strip()
    return text[:-3].strip() if text.endswith("\n...") else text


def _positive_int_list(seeds: Any) -> List[int]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"seeds: expected a non-empty list of ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: duplicates in {seeds}")
    return seeds


def _read_header(p: Path, data: Dict[str, Any]) -> Tuple[str, Optional[Path], List[int], Optional[int]]:
    """The sweep's name, base config, seeds and epoch budget, each checked."""
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown sweep key; valid keys: {sorted(_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name: expected a non-empty string, got {name!r}")
    base = data.get("base")
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"base: expected a path to a training config, got {base!r}")
    base_path = (p.parent / base) if base else None
    if base_path is not None and not base_path.is_file():
        raise ConfigError(f"base: file not found: {base_path}")
    seeds = _positive_int_list(data.get("seeds", [0]))
    budget = data.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"epochs"}:
        raise ConfigError(f"budget: expected a mapping with 'epochs', got {budget!r}")
    epochs = budget.get("epochs")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs <= 0):
        raise ConfigError(f"budget.epochs: expected a positive int, got {epochs!r}")
    return name, base_path, seeds, epochs


def _parse_rows(rows: Any) -> List[Dict[str, Any]]:
    """The rows, each a mapping with a unique name and known keys; baselines name rows."""
    if not isinstance(rows, list) or not rows:
        raise ConfigError("rows: expected a non-empty list of rows")
    seen = set()
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ConfigError(f"rows[{i}]: expected a mapping, got {r!r}")
        bad = sorted(set(r) - _ROW_KEYS)
        if bad:
            raise ConfigError(f"rows[{i}].{bad[0]}: unknown row key; valid keys: {sorted(_ROW_KEYS)}")
        rn = r.get("name")
        if not isinstance(rn, str) or not rn or "/" in rn or rn in seen:
            raise ConfigError(f"rows[{i}].name: expected a unique name without '/', got {rn!r}")
        if not isinstance(r.get("train", True), bool):
            raise ConfigError(f"rows[{i}].train: expected true or false, got {r['train']!r}")
        seen.add(rn)
    for i, r in enumerate(rows):
        if "baseline" in r and r["baseline"] not in seen:
            raise ConfigError(f"rows[{i}].baseline: {r['baseline']!r} is not a row; rows: {sorted(seen)}")
    return rows


def _parse_compare(compare: Any, row_names: set) -> Tuple[Optional[str], List[List[str]]]:
    """``compare``: the baseline row and further [row, baseline] pairs, all naming rows."""
    compare = compare or {}
    if not isinstance(compare, dict) or set(compare) - {"baseline", "pairs"}:
        raise ConfigError(f"compare: expected a mapping with 'baseline' and/or 'pairs', got {compare!r}")
    baseline = compare.get("baseline")
    if baseline is not None and baseline not in row_names:
        raise ConfigError(f"compare.baseline: {baseline!r} is not a row; rows: {sorted(row_names)}")
    pairs = compare.get("pairs") or []
    if not isinstance(pairs, list):
        raise ConfigError(f"compare.pairs: expected a list of [row, baseline] pairs, got {pairs!r}")
    for i, pair in enumerate(pairs):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and pair[0] != pair[1]
            and all(isinstance(x, str) and x in row_names for x in pair)
        ):
            raise ConfigError(
                f"compare.pairs[{i}]: expected [row, baseline], two different rows of {sorted(row_names)}, got {pair!r}"
            )
    return baseline, [list(pair) for pair in pairs]


def _expand_cells(sweep: Sweep) -> List[Cell]:
    """One cell per (row, seed): the sweep's overrides, the row's, the seed, the budget, then --set."""
    cells = []
    for r in sweep.rows:
        for s in sweep.seeds:
            cname = f"{r['name']}-s{s}"
            ov = [
                *sweep.overrides,
                *_as_overrides(r.get("set"), f"rows.{r['name']}.set"),
                f"seed={s}",
                f"name={_yaml_value(cname)}",
                f"train.out_dir={_yaml_value(str(sweep.runs_dir))}",
                "train.progress=false",
            ]
            if sweep.epochs is not None:
                ov.append(f"train.epochs={sweep.epochs}")
            ov += sweep.extra
            cells.append(Cell(cname, r["name"], s, r.get("train", True), ov))
    return cells


def _check_cells(sweep: Sweep) -> None:
    """Every cell's config validates, and every trained row gets the same optimizer steps."""
    steps = {}
    for c in sweep.cells:
        try:
            cfg = sweep.config(c)
        except ConfigError as e:
            raise ConfigError(f"rows.{c.row}: {e}") from None
        if c.train:
            steps[c.row] = (
                cfg["train"]["epochs"],
                cfg["optim"]["batch_size"],
                cfg["data"]["train_limit"],
                cfg["train"]["max_steps"],
            )
    if len(set(steps.values())) > 1:
        raise ConfigError(
            "budget: the trained rows differ in (train.epochs, optim.batch_size, data.train_limit, "
            f"train.max_steps), so they would not get the same optimizer steps: {steps}"
        )


def load_sweep(path: str | Path, out: Optional[str | Path] = None, extra: Sequence[str] = ()) -> Sweep:
    """Parse and validate a sweep file; every cell's config is validated too.

    ``extra``: ``KEY=VALUE`` overrides applied to every cell after its own
    (``sslext-sweep run --set``), e.g. to dry-run a GPU sweep on a CPU.
    """
    p = resolve_config_path(path, "sweep file")
    data = read_yaml_mapping(p, "sweep file")
    name, base_path, seeds, epochs = _read_header(p, data)
    rows = _parse_rows(data.get("rows"))
    baseline, pairs = _parse_compare(data.get("compare"), {r["name"] for r in rows})
    if out is not None:
        runs_dir, results_dir = Path(out) / "runs", Path(out)
    else:
        runs_dir = Path(data.get("runs_dir") or f"runs/sweeps/{name}")
        results_dir = Path(data.get("results_dir") or f"runs/sweeps/{name}/results")
    sweep = Sweep(
        p,
        name,
        base_path,
        rows,
        seeds,
        epochs,
        _as_overrides(data.get("set"), "set"),
        runs_dir,
        results_dir,
        baseline,
        str(data.get("description", "")),
        None if out is None else str(out),
        list(extra),
    )
    sweep.pairs = pairs
    sweep.cells = _expand_cells(sweep)
    _check_cells(sweep)
    return sweep
