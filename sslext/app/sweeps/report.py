"""Tables and plots of a sweep, from its per-cell records alone (no training).

Writes into the sweep's results directory: ``results.md``, ``results.csv``
(one row per cell), ``results.json`` (cells, per-row aggregates, paired
differences) and ``plot_final.png``, ``plot_curves.png``, ``plot_spectrum.png``.
Every aggregate names the run directories it came from. ``sweep`` arguments
are :class:`sslext.app.sweeps.spec.Sweep` objects.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..training.metrics import atomic_write_text
from .columns import CURVES, HEADLINE, METRICS  # noqa: F401  (public here)
from .plots import write_plots

__all__ = [
    "read_record",
    "collect",
    "aggregate",
    "paired_differences",
    "pair_differences",
    "write_report",
    "t_quantile_975",
]

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def read_record(path: Path) -> Optional[Dict[str, Any]]:
    """A cell's record, or None when it is missing or torn (records are written atomically)."""
    try:
        rec = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"df: expected >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def _mean_std(xs: List[float]) -> tuple:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else float("nan")
    return m, sd


def collect(sweep: Any) -> Dict[str, Dict[str, Any]]:
    """Every cell's record (done, diverged or failed) by cell name; cells never run are absent."""
    out = {}
    for c in sweep.cells:
        rec = read_record(sweep.record_path(c))
        if rec is not None:
            out[c.name] = rec
    return out


def aggregate(sweep: Any, records: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per row and metric: mean, std (n - 1), n, the per-seed values and their run directories."""
    rows: Dict[str, Dict[str, Any]] = {}
    for r in sweep.rows:
        recs = [records.get(c.name, {}) for c in sweep.cells if c.row == r["name"]]
        done = [x for x in recs if x.get("status") == "done"]
        n_diverged = sum(x.get("status") == "diverged" for x in recs)
        agg: Dict[str, Any] = {
            "n_done": len(done),
            "n_diverged": n_diverged,
            "n_cells": len(sweep.seeds),
            "label": r.get("label", r["name"]),
            "metrics": {},
        }
        for k in METRICS:
            vals = [(d["seed"], d["final_eval"][k], d["run_dir"]) for d in done if k in d.get("final_eval", {})]
            if not vals:
                continue
            m, sd = _mean_std([v for _, v, _ in vals])
            agg["metrics"][k] = {
                "mean": m,
                "std": sd,
                "n": len(vals),
                "values": {s: v for s, v, _ in vals},
                "run_dirs": [d for _, _, d in vals],
            }
        rows[r["name"]] = agg
    return rows


def paired_differences(
    sweep: Any, records: Dict[str, Dict[str, Any]], baseline: Optional[str], metrics=HEADLINE
) -> Dict[str, Dict[str, Any]]:
    """Row minus its baseline, seed by seed (same seed = same init and data order), with a 95 % t-interval.

    A row's baseline is its own ``baseline:`` key, else ``baseline``; rows
    without one (and the baselines themselves) are left out.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for r in sweep.rows:
        base = r.get("baseline", baseline)
        if base is None or base == r["name"]:
            continue
        out[r["name"]] = _paired(sweep, records, r["name"], base, metrics)
    return out


def _baseline_of(sweep: Any, name: str) -> Optional[str]:
    row = next(r for r in sweep.rows if r["name"] == name)
    return row.get("baseline", sweep.baseline)


def pair_differences(sweep: Any, records: Dict[str, Dict[str, Any]], metrics=HEADLINE) -> List[Dict[str, Any]]:
    """The sweep's ``compare.pairs``: for each [row, baseline], the differences of :func:`paired_differences`."""
    out = []
    for row, base in getattr(sweep, "pairs", []):
        # Kept when empty (no seed where both finished): a requested comparison is never dropped silently.
        out.append({"row": row, "baseline": base, "metrics": _paired(sweep, records, row, base, metrics)})
    return out


def cpu_of(rec: Dict[str, Any]) -> str:
    """The CPU model a cell ran on: its record's ``cpu``; ``cpu_inferred`` for records
    written before cells recorded it (set only where a bit-identical rerun on a known
    CPU showed it); else "unrecorded"."""
    return rec.get("cpu") or rec.get("cpu_inferred") or "unrecorded"


def _paired(sweep: Any, records: Dict[str, Dict[str, Any]], row: str, base: str, metrics) -> Dict[str, Any]:
    def done(name, seed):
        rec = records.get(f"{name}-s{seed}")
        return rec if rec and rec.get("status") == "done" else None

    res = {}
    for k in metrics:
        diffs, other_cpu = {}, []
        for s in sweep.seeds:
            ra, rb = done(row, s), done(base, s)
            if ra is None or rb is None or ra["final_eval"].get(k) is None or rb["final_eval"].get(k) is None:
                continue
            # Float reductions differ between CPU models by about a seed's spread:
            # a pair from two models would measure the machines, not the rows.
            if cpu_of(ra) != cpu_of(rb):
                other_cpu.append(s)
                continue
            diffs[s] = ra["final_eval"][k] - rb["final_eval"][k]
        if not diffs:
            if other_cpu:
                res[k] = {"baseline": base, "n": 0, "cross_cpu_seeds": other_cpu}
            continue
        m, sd = _mean_std(list(diffs.values()))
        n = len(diffs)
        half = t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
        res[k] = {
            "baseline": base,
            "mean": m,
            "std": sd,
            "n": n,
            "per_seed": diffs,
            "ci95": [m - half, m + half],
            "excludes_zero": bool(n > 1 and (m - half > 0 or m + half < 0)),
            "cross_cpu_seeds": other_cpu,
        }
    return res


def _fmt(m: Dict[str, Any], digits: int = 2) -> str:
    if m["n"] > 1:
        return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"
    return f"{m['mean']:.{digits}f}"


def _diff_rows(agg, name: str, res: Dict[str, Any]) -> List[str]:
    lines = []
    for k, d in res.items():
        if d["n"] == 0:
            lines.append(
                f"| {agg[name]['label']} | {agg[d['baseline']]['label']} | {METRICS[k]} | — | "
                f"not paired: seeds {d['cross_cpu_seeds']} ran on different CPU models | | |"
            )
            continue
        ci = "n < 2" if d["n"] < 2 else f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
        per = ", ".join(f"s{s}: {v:+.2f}" for s, v in d["per_seed"].items())
        lines.append(
            f"| {agg[name]['label']} | {agg[d['baseline']]['label']} | {METRICS[k]} | "
            f"{d['mean']:+.2f} | {ci} | {per} | {'yes' if d['excludes_zero'] else 'no'} |"
        )
    return lines


_DIFF_HEAD = [
    "| row | baseline | metric | mean difference | 95 % interval | per seed | distinguishable from 0 |",
    "|---|---|---|---|---|---|---|",
]


def _not_comparable(agg, missing: List[tuple]) -> List[str]:
    if not missing:
        return []
    names = "; ".join(f"{agg[r]['label']} − {agg[b]['label']}" for r, b in missing)
    return ["", f"No seed where both rows finished, so no difference: {names} (see the cells' status below)."]


def _markdown(sweep: Any, records, agg, diffs, pairs=()) -> str:
    lines = [f"# Sweep `{sweep.name}`", ""]
    if sweep.description:
        lines += [sweep.description.strip(), ""]
    done = sum(1 for r in records.values() if r.get("status") == "done")
    diverged = [r for r in records.values() if r.get("status") == "diverged"]
    failed = [r for r in records.values() if r.get("status") == "failed"]
    lines += [
        f"Cells: {done} done, {len(diverged)} diverged, {len(failed)} failed, "
        f"{len(sweep.cells) - len(records)} not run "
        f"(of {len(sweep.cells)}: {len(sweep.rows)} rows x seeds {sweep.seeds}). "
        "Mean ± sample std over seeds; `n` is the number of seeds that trained to the end "
        "(a diverged cell is finished, but has no metrics).",
        "",
    ]
    head = [k for k in METRICS if any(k in a["metrics"] for a in agg.values())]
    lines += ["| " + " | ".join(["row", "n", *(METRICS[k] for k in head)]) + " |", "|" + "---|" * (2 + len(head))]
    for a in agg.values():
        cells = [(_fmt(a["metrics"][k], 3 if "frac" in k else 2) if k in a["metrics"] else "-") for k in head]
        n = f"{a['n_done']}/{a['n_cells']}" + (f" ({a['n_diverged']} diverged)" if a.get("n_diverged") else "")
        lines.append("| " + " | ".join([a["label"], n, *cells]) + " |")
    lines.append("")
    if any(diffs.values()):
        lines += ["## Paired differences against the baseline row (same seed), 95 % t-interval", "", *_DIFF_HEAD]
        for name, res in diffs.items():
            lines += _diff_rows(agg, name, res)
        lines += _not_comparable(agg, [(name, _baseline_of(sweep, name)) for name, res in diffs.items() if not res])
        lines.append("")
    if pairs:
        lines += ["## Further paired comparisons (`compare.pairs`, same seed), 95 % t-interval", "", *_DIFF_HEAD]
        for p in pairs:
            lines += _diff_rows(agg, p["row"], p["metrics"])
        lines += _not_comparable(agg, [(p["row"], p["baseline"]) for p in pairs if not p["metrics"]])
        lines.append("")
    lines += [
        "## Runs behind every number",
        "",
        "| cell | status | steps | seconds | CPU | run directory |",
        "|---|---|---|---|---|---|",
    ]
    for c in sweep.cells:
        r = records.get(c.name)
        if r is None:
            # A checkpoint without a record: interrupted, and the next run resumes it.
            state = "in progress (resumable)" if (sweep.run_dir(c) / "last.pt").exists() else "not run"
            lines.append(f"| {c.name} | {state} | - | - | - | `{sweep.run_dir(c)}` |")
            continue
        secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        lines.append(f"| {c.name} | {r['status']} | {r.get('steps', '-')} | {secs} | {cpu_of(r)} | `{r['run_dir']}` |")
    lines.append("")
    if diverged:
        lines += [
            "## Diverged cells",
            "",
            "Training stopped at a non-finite loss (`train.on_nonfinite`); the same config and seed "
            "diverge at the same step, so these cells are finished.",
            "",
        ]
        for r in diverged:
            terms = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, (int, float)) else f"{k} {v}"
                for k, v in r.get("terms_at_divergence", {}).items()
            )
            lines += [
                f"- `{r['cell']}`: epoch {r.get('diverged_at_epoch')}, step {r.get('diverged_at_step')}"
                + (f"; terms: {terms}" if terms else "")
            ]
        lines.append("")
    if failed:
        lines += ["## Failed cells", ""]
        for r in failed:
            err = r.get("error", "").strip().splitlines()[-3:]
            lines += [f"- `{r['cell']}` (exit {r.get('returncode')}): " + " / ".join(err)]
        lines.append("")
    lines += [
        "## Plots",
        "",
        "![final metrics](plot_final.png)",
        "",
        "![per-epoch curves](plot_curves.png)",
        "",
        "![singular-value spectra](plot_spectrum.png)",
        "",
    ]
    return "\n".join(lines)


def _csv(sweep: Any, records) -> str:
    keys = sorted(
        {k for r in records.values() for k, v in r.get("final_eval", {}).items() if isinstance(v, (int, float))}
    )
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["cell", "row", "method", "seed", "status", "steps", "seconds", "cpu", *keys, "run_dir"])
    for c in sweep.cells:
        r = records.get(c.name)
        if r is None:
            continue
        fe = r.get("final_eval", {})
        w.writerow(
            [
                c.name,
                c.row,
                r.get("method", ""),
                c.seed,
                r["status"],
                r.get("steps", ""),
                f"{r['seconds']:.1f}" if "seconds" in r else "",
                cpu_of(r),
                *[fe.get(k, "") for k in keys],
                r["run_dir"],
            ]
        )
    return buf.getvalue()


def _strict_json(obj: Any) -> Any:
    """``obj`` with undefined numbers (the std of one seed, an interval of n < 2) as null: strict JSON."""
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _summary(rec: Dict[str, Any]) -> Dict[str, Any]:
    """A cell's record without its curves, spectra and config (those stay in cells/<cell>.json)."""
    out = {k: v for k, v in rec.items() if k not in ("epochs", "config", "final_eval", "error")}
    out["final_eval"] = {k: v for k, v in rec.get("final_eval", {}).items() if isinstance(v, (int, float))}
    return out


def write_report(sweep: Any) -> Path:
    """Write the tables and plots of ``sweep`` from its records; returns the path of results.md."""
    out = sweep.results_dir
    out.mkdir(parents=True, exist_ok=True)
    records = collect(sweep)
    agg = aggregate(sweep, records)
    diffs = paired_differences(sweep, records, sweep.baseline)
    pairs = pair_differences(sweep, records)
    results = {
        "sweep": sweep.name,
        "seeds": sweep.seeds,
        "rows": agg,
        "paired_differences": {
            "baseline": sweep.baseline,
            "rows": {k: v for k, v in diffs.items() if v},
            "pairs": pairs,
        },
        "cells": {k: _summary(v) for k, v in records.items()},
    }
    atomic_write_text(out / "results.json", json.dumps(_strict_json(results), indent=1, allow_nan=False, default=float))
    atomic_write_text(out / "results.csv", _csv(sweep, records))
    atomic_write_text(out / "results.md", _markdown(sweep, records, agg, diffs, pairs))
    write_plots(sweep, records, agg, out)
    return out / "results.md"
