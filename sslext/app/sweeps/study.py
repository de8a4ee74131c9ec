"""The study across its sweeps: the learning-rate table and the budget trend.

Reads finished cell records only (no training), like :mod:`sslext.app.sweeps.report`,
but joins several sweeps:

- ``lr``: from a tuning sweep scored on held-out training images
  (``eval.split: val``; rows named ``<method row>-lr<lr>``), each method's best
  learning rate by one metric; then, from the test-split sweeps, each method at
  the baseline method's best lr and at its own. ``--write-sweep FILE`` writes
  the sweep of the test cells still missing for that table (3 seeds each).
- ``budget``: for sweeps of one recipe at several budgets (``EPOCHS=SWEEP``),
  each row's paired gap to the baseline (same seed, same CPU model) against the
  budget, with the rows' per-epoch backbone RankMe beside it.
- ``pairs``: one sweep's ``compare.pairs`` (a variant against the reading it
  changes, e.g. B in the graph against B detached), each row also against the
  sweep's baseline: both paired gaps and the row's own value, in one table.

``python -m sslext.app.sweeps.study lr --tuning T.yaml --test S.yaml [--test ...] --out DIR``
``python -m sslext.app.sweeps.study budget --sweep 3=A.yaml --sweep 10=B.yaml --rows R [R ...] --out DIR``
``python -m sslext.app.sweeps.study pairs --sweep S.yaml --out DIR``
(``make science-report`` runs all three for the committed study.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..config import ConfigError
from ..training.metrics import atomic_write_text
from .columns import METRICS
from .report import aggregate, collect, pair_differences, paired_differences
from .spec import Sweep, load_sweep

__all__ = ["tuning_table", "lr_table", "missing_test_sweep", "budget_trend", "pairs_table", "main"]

_LR_ROW = re.compile(r"^(?P<prefix>.+)-lr(?P<lr>[0-9.eE+-]+)$")


def _done(records: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [r for r in records.values() if r.get("status") == "done"]


def _lr(rec: Dict[str, Any]) -> float:
    return float(rec["config"]["optim"]["lr"])


def _split(rec: Dict[str, Any]) -> str:
    return rec["config"].get("eval", {}).get("split", "test")


def _lr_text(lr: float) -> str:
    return repr(float(lr))


def tuning_table(tuning: Sweep, metric: str) -> Dict[str, Dict[str, Any]]:
    """Per method row (the name before ``-lr``): the metric at each lr tried and the best lr.

    Only cells scored on held-out data count: a tuning cell evaluated on test
    would choose the lr on the data the table reports. A method's best lr is
    named only once each of its cells has finished or diverged: the best of a
    partial grid is not the grid's best. A diverged lr is listed, never chosen.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for r in tuning.rows:
        m = _LR_ROW.match(r["name"])
        if m is None:
            raise ConfigError(f"{tuning.path}: tuning row {r['name']!r} is not named <row>-lr<lr>")
        out.setdefault(
            m["prefix"], {"by_lr": {}, "set": {}, "label": r.get("label", r["name"]), "diverged_lrs": [], "pending": 0}
        )
    records = collect(tuning)
    for cell in tuning.cells:
        status = records.get(cell.name, {}).get("status")
        entry = out[_LR_ROW.match(cell.row)["prefix"]]
        if status == "diverged":
            entry["diverged_lrs"].append(_lr_of_row(tuning, cell.row))
        elif status != "done":
            entry["pending"] += 1
    for rec in _done(records):
        if _split(rec) != "val":
            raise ConfigError(f"{tuning.path}: cell {rec['cell']} was scored on {_split(rec)!r}, not on val")
        prefix = _LR_ROW.match(rec["row"])["prefix"]
        if metric in rec["final_eval"]:
            out[prefix]["by_lr"].setdefault(_lr(rec), []).append(rec["final_eval"][metric])
    for r in tuning.rows:
        m = _LR_ROW.match(r["name"])
        row_set = {k: v for k, v in (r.get("set") or {}).items() if k != "optim.lr"}
        out[m["prefix"]]["set"] = row_set
    for entry in out.values():
        means = {lr: sum(v) / len(v) for lr, v in entry["by_lr"].items()}
        entry["by_lr"] = dict(sorted(means.items()))
        entry["diverged_lrs"] = sorted(set(entry["diverged_lrs"]))
        entry["best"] = max(means, key=means.get) if means and not entry["pending"] else None
    return out


def _lr_of_row(tuning: Sweep, row: str) -> float:
    # The resolved config, not the row's own `set`: the lr may come from the base or a nested mapping.
    return float(tuning.config(next(c for c in tuning.cells if c.row == row))["optim"]["lr"])


def test_values(tests: Sequence[Sweep], prefix: str, lr: float, metric: str) -> Dict[int, float]:
    """Seed -> metric of the test-split cells of ``prefix`` at ``lr`` (rows ``prefix`` or ``prefix-lr<lr>``)."""
    vals: Dict[int, float] = {}
    for sweep in tests:
        for rec in _done(collect(sweep)):
            m = _LR_ROW.match(rec["row"])
            row_prefix = m["prefix"] if m else rec["row"]
            if row_prefix != prefix or _split(rec) != "test" or not math.isclose(_lr(rec), lr):
                continue
            if metric in rec["final_eval"]:
                vals.setdefault(rec["seed"], rec["final_eval"][metric])
    return vals


def lr_table(tuning: Sweep, tests: Sequence[Sweep], baseline: str, tune_metric: str, metric: str) -> Dict[str, Any]:
    """The learning-rate table: every method at the baseline's best lr and at its own, on test."""
    tuned = tuning_table(tuning, tune_metric)
    if baseline not in tuned:
        raise ConfigError(f"--baseline: {baseline!r} is not a row of {tuning.path}; rows: {sorted(tuned)}")
    base_lr = tuned[baseline]["best"]
    rows = {}
    for prefix, t in tuned.items():
        row = {
            "label": re.sub(r",? lr [0-9.eE+-]+$", "", t["label"]),
            "val": t["by_lr"],
            "best_lr": t["best"],
            "diverged_lrs": t["diverged_lrs"],
            "pending": t["pending"],
            "at": {},
        }
        for which, lr in (("baseline_lr", base_lr), ("own_lr", t["best"])):
            if lr is None:
                continue
            v = test_values(tests, prefix, lr, metric)
            xs = list(v.values())
            m = statistics.fmean(xs) if xs else float("nan")
            sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
            row["at"][which] = {"lr": lr, "n": len(v), "mean": m, "std": sd, "per_seed": v}
        rows[prefix] = row
    return {"baseline": baseline, "baseline_lr": base_lr, "tune_metric": tune_metric, "metric": metric, "rows": rows}


def missing_test_sweep(
    table: Dict[str, Any], tuning: Sweep, seeds: Sequence[int], name: str, results_dir: str
) -> Optional[Dict[str, Any]]:
    """A sweep file (as a mapping) of the test cells the table still lacks, or None when none lack."""
    tuned = tuning_table(tuning, table["tune_metric"])
    rows, seen = [], set()
    for prefix, row in table["rows"].items():
        for at in row["at"].values():
            key = (prefix, at["lr"])
            if at["n"] >= len(seeds) or key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    "name": f"{prefix}-lr{_lr_text(at['lr'])}",
                    "label": f"{row['label']}, lr {_lr_text(at['lr'])}",
                    "set": {**tuned[prefix]["set"], "optim.lr": at["lr"]},
                }
            )
    if not rows:
        return None
    raw = yaml.safe_load(tuning.path.read_text())
    # The tuning sweep's own settings, less the held-out split: these cells report on test.
    common = {k: v for k, v in (raw.get("set") or {}).items() if not k.startswith("eval.")}
    return {
        "name": name,
        "description": f"Test-split cells for the lr table: each method at {table['baseline']}'s best lr on "
        f"held-out data and at its own (selected by {tuning.name}).",
        "base": raw["base"],
        **({"set": common} if common else {}),
        "budget": raw.get("budget", {}),
        "seeds": list(seeds),
        "rows": rows,
        "runs_dir": f"runs/sweeps/{name}",
        "results_dir": results_dir,
    }


def budget_trend(budgets: Dict[int, Sweep], baseline: str, rows: Sequence[str], metric: str) -> Dict[str, Any]:
    """Per row and budget: the paired gap to ``baseline`` (mean, 95 % t-interval, per seed)."""
    out: Dict[str, Any] = {"baseline": baseline, "metric": metric, "rows": {}}
    for row in rows:
        per = {}
        for epochs, sweep in sorted(budgets.items()):
            names = {r["name"] for r in sweep.rows}
            if row not in names or baseline not in names:
                raise ConfigError(f"{sweep.path}: needs rows {baseline!r} and {row!r}")
            pair = [{**r, "baseline": baseline} for r in sweep.rows if r["name"] in (row, baseline)]
            sub = dataclasses.replace(sweep, rows=pair)
            diff = paired_differences(sub, collect(sweep), baseline, metrics=(metric,)).get(row, {}).get(metric)
            per[epochs] = diff or {"n": 0}
        out["rows"][row] = per
    return out


def pairs_table(sweep: Sweep, metric: str) -> Dict[str, Any]:
    """Per ``compare.pairs`` entry [row, other]: the row's paired gap to ``other`` and to the
    sweep's baseline (same seed, same CPU model), and the row's mean ± std."""
    records = collect(sweep)
    agg = aggregate(sweep, records)
    to_base = paired_differences(sweep, records, sweep.baseline, metrics=(metric,))
    out: Dict[str, Any] = {"baseline": sweep.baseline, "metric": metric, "rows": []}
    for pair in pair_differences(sweep, records, metrics=(metric,)):
        row = pair["row"]
        out["rows"].append(
            {
                "row": row,
                "label": agg[row]["label"],
                "other": pair["baseline"],
                "other_label": agg[pair["baseline"]]["label"],
                "vs_other": pair["metrics"].get(metric, {"n": 0}),
                "vs_baseline": to_base.get(row, {}).get(metric, {"n": 0}),
                "value": agg[row]["metrics"].get(metric, {"n": 0}),
                "n_diverged": agg[row]["n_diverged"],
                "n_cells": agg[row]["n_cells"],
            }
        )
    return out


def _rankme_curves(budgets: Dict[int, Sweep], names: Sequence[str]) -> Dict[str, Dict[int, List[List[float]]]]:
    """Row -> budget -> per seed, the backbone RankMe after each epoch."""
    curves: Dict[str, Dict[int, List[List[float]]]] = {}
    for epochs, sweep in budgets.items():
        for rec in _done(collect(sweep)):
            if rec["row"] not in names:
                continue
            ys = [e["backbone_rankme"] for e in rec.get("epochs", []) if "backbone_rankme" in e]
            curves.setdefault(rec["row"], {}).setdefault(epochs, []).append(ys)
    return curves


def plot_budget(trend: Dict[str, Any], curves, labels: Dict[str, str], path: Path) -> None:
    import matplotlib  # optional at import time: only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (row, per) in enumerate(trend["rows"].items()):
        color = f"C{i}"
        xs = [e for e, d in per.items() if d.get("n")]
        ax.plot(xs, [per[e]["mean"] for e in xs], "o-", color=color, label=labels.get(row, row))
        for e in xs:
            ax.scatter([e] * len(per[e]["per_seed"]), list(per[e]["per_seed"].values()), color=color, s=10, alpha=0.5)
            lo, hi = per[e].get("ci95", [math.nan, math.nan])
            if math.isfinite(lo):
                ax.vlines(e, lo, hi, color=color, alpha=0.6)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("pretraining epochs")
    ax.set_ylabel(f"{METRICS.get(trend['metric'], trend['metric'])}: row − {trend['baseline']}")
    ax.set_title("Paired gap to the baseline (dots: seeds; bars: 95 % t-interval)")
    ax.legend(fontsize=8)
    styles = {e: s for e, s in zip(sorted({e for c in curves.values() for e in c}), ("-", "--", ":", "-."))}
    for i, row in enumerate([trend["baseline"], *trend["rows"]]):
        for epochs, seeds in sorted(curves.get(row, {}).items()):
            for j, ys in enumerate(seeds):
                ax2.plot(
                    [(k + 1) / epochs for k in range(len(ys))],
                    ys,
                    styles[epochs],
                    color=f"C{i - 1}" if i else "k",
                    alpha=0.8,
                    label=f"{labels.get(row, row)}, {epochs} ep" if j == 0 else None,
                )
    ax2.set_xlabel("fraction of training")
    ax2.set_ylabel("backbone RankMe (end of epoch)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _fmt(d: Dict[str, Any]) -> str:
    if not d.get("n"):
        return "not run"
    if d["n"] == 1:
        return f"{d['mean']:.2f} (1 seed)"
    return f"{d['mean']:.2f} ± {d['std']:.2f} (n={d['n']})"


def _gap(d: Dict[str, Any]) -> str:
    """A paired difference: mean [95 % t-interval] (n seeds)."""
    if not d.get("n"):
        return "not run"
    if d["n"] == 1:
        return f"{d['mean']:+.2f} (n=1)"
    return f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] (n={d['n']})"


def lr_markdown(table: Dict[str, Any], lrs: Sequence[float]) -> str:
    b, blr = table["baseline"], table["baseline_lr"]
    head = "".join(f" val @ {_lr_text(lr)} |" for lr in lrs)
    lines = [
        f"Learning rate chosen on held-out training images by {METRICS.get(table['tune_metric'])}; "
        f"test results by {METRICS.get(table['metric'])} (mean ± std over seeds).",
        "",
        f"| method |{head} best lr | test @ {b}'s lr ({_lr_text(blr) if blr else '-'}) | test @ own best lr |",
        "|---|" + "---|" * (len(lrs) + 3),
    ]
    for row in table["rows"].values():
        vals = "".join(
            f" {row['val'][lr]:.2f} |" if lr in row["val"] else " diverged |" if lr in row["diverged_lrs"] else " - |"
            for lr in lrs
        )
        if row["pending"]:
            best = f"pending ({row['pending']} cells left)"
        else:
            best = _lr_text(row["best_lr"]) if row["best_lr"] is not None else "-"
        at = row["at"]
        lines.append(
            f"| {row['label']} |{vals} {best} | {_fmt(at.get('baseline_lr', {}))} | {_fmt(at.get('own_lr', {}))} |"
        )
    return "\n".join(lines) + "\n"


def budget_markdown(trend: Dict[str, Any], labels: Dict[str, str]) -> str:
    epochs = sorted({e for per in trend["rows"].values() for e in per})
    lines = [
        f"Paired gap to {trend['baseline']} ({METRICS.get(trend['metric'])}), per budget: mean [95 % t-interval] "
        "(n seeds; pairs only within one CPU model).",
        "",
        "| row | " + " | ".join(f"{e} epochs" for e in epochs) + " |",
        "|---|" + "---|" * len(epochs),
    ]
    for row, per in trend["rows"].items():
        cells = [_gap(per.get(e, {})) for e in epochs]
        lines.append(f"| {labels.get(row, row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pairs_markdown(table: Dict[str, Any]) -> str:
    b = table["baseline"]
    lines = [
        f"{METRICS.get(table['metric'])}: each row minus the row it is compared with, and minus {b}, "
        "seed by seed: mean [95 % t-interval] (n seeds; pairs only within one CPU model); the row's own "
        "mean ± std.",
        "",
        f"| row | compared with | − that row | − {b} | row (mean ± std) |",
        "|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        value = _fmt(r["value"])
        if r["n_diverged"]:  # a diverged cell has no value: "not run" would hide it
            value = f"{value if r['value'].get('n') else ''}; diverged {r['n_diverged']} of {r['n_cells']}".lstrip("; ")
        lines.append(
            f"| {r['label']} | {r['other_label']} | {_gap(r['vs_other'])} | {_gap(r['vs_baseline'])} | {value} |"
        )
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sslext.app.sweeps.study", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    lr = sub.add_parser("lr", help="the learning-rate table (tuned on val, reported on test)")
    lr.add_argument("--tuning", required=True, help="sweep file of the tuning cells (eval.split: val)")
    lr.add_argument("--test", action="append", default=[], help="sweep file with test-split cells (repeatable)")
    lr.add_argument("--baseline", default="vicreg", help="row whose best lr every method is also run at")
    lr.add_argument("--tune-metric", default="linear_acc_10pct", choices=sorted(METRICS), help="chooses the lr")
    lr.add_argument("--metric", default="linear_acc", choices=sorted(METRICS), help="reported on test")
    lr.add_argument("--seeds", default="0,1,2", help="seeds of the test cells --write-sweep asks for")
    lr.add_argument("--write-sweep", help="write the sweep of the missing test cells to this file")
    lr.add_argument("--out", required=True, help="folder for lr.md and lr.json")
    bu = sub.add_parser("budget", help="the paired gap to the baseline against the training budget")
    bu.add_argument("--sweep", action="append", required=True, help="EPOCHS=SWEEP_FILE (repeatable)")
    bu.add_argument("--rows", nargs="+", required=True, help="rows compared with the baseline")
    bu.add_argument("--baseline", default="vicreg", help="row every gap is measured from")
    bu.add_argument("--metric", default="linear_acc", choices=sorted(METRICS))
    bu.add_argument("--out", required=True, help="folder for budget.md, budget.json and plot_budget.png")
    pa = sub.add_parser("pairs", help="a sweep's compare.pairs, each row also against the baseline")
    pa.add_argument("--sweep", required=True, help="sweep file with compare.pairs")
    pa.add_argument("--metric", default="linear_acc", choices=sorted(METRICS))
    pa.add_argument("--out", required=True, help="folder for pairs.md and pairs.json")
    return p


def _budgets(specs: Sequence[str]) -> Dict[int, Sweep]:
    out = {}
    for s in specs:
        epochs, sep, path = s.partition("=")
        if not sep or not epochs.isdigit():
            raise ConfigError(f"--sweep: expected EPOCHS=SWEEP_FILE, got {s!r}")
        out[int(epochs)] = load_sweep(path)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    try:
        if args.cmd == "lr":
            seeds = [int(s) for s in args.seeds.split(",")]
            tuning = load_sweep(args.tuning)
            tests = [load_sweep(t) for t in args.test]
            table = lr_table(tuning, tests, args.baseline, args.tune_metric, args.metric)
            lrs = sorted({_lr_of_row(tuning, r["name"]) for r in tuning.rows})
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "lr.md", lr_markdown(table, lrs))
            atomic_write_text(out / "lr.json", json.dumps(table, indent=1, default=float))
            # A diverged tuning cell is a finished result (that lr is unusable), not a missing one.
            records = collect(tuning)
            unfinished = [
                c.name for c in tuning.cells if records.get(c.name, {}).get("status") not in ("done", "diverged")
            ]
            if args.write_sweep and unfinished:
                print(
                    f"--write-sweep: the tuning is not finished ({len(unfinished)} cells left, e.g. "
                    f"{unfinished[0]}); the best lr could still change, so no sweep is written"
                )
            elif args.write_sweep:
                dest = Path(args.write_sweep)
                spec = missing_test_sweep(table, tuning, seeds, dest.stem, str(out / "cells_best_lr"))
                if spec is None:
                    print("every test cell of the table exists; no sweep written")
                else:
                    atomic_write_text(dest, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
                    print(f"wrote {dest}: {len(spec['rows'])} rows x {len(seeds)} seeds")
            print((out / "lr.md").read_text())
        elif args.cmd == "pairs":
            table = pairs_table(load_sweep(args.sweep), args.metric)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "pairs.md", pairs_markdown(table))
            atomic_write_text(out / "pairs.json", json.dumps(table, indent=1, default=float))
            print((out / "pairs.md").read_text())
        else:
            budgets = _budgets(args.sweep)
            trend = budget_trend(budgets, args.baseline, args.rows, args.metric)
            any_sweep = next(iter(budgets.values()))
            labels = {r["name"]: r.get("label", r["name"]) for r in any_sweep.rows}
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "budget.md", budget_markdown(trend, labels))
            atomic_write_text(out / "budget.json", json.dumps(trend, indent=1, default=float))
            curves = _rankme_curves(budgets, [args.baseline, *args.rows])
            plot_budget(trend, curves, labels, out / "plot_budget.png")
            print((out / "budget.md").read_text())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
