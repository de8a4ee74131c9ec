"""Markdown report and PNG plots of a training run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import yaml

__all__ = ["write_report", "read_metrics"]

_TERM_SKIP = {"kind", "step", "epoch", "lr", "train_seconds", "images_per_second", "probe_loss"}


def read_metrics(run_dir: str | Path) -> List[Dict[str, Any]]:
    """Records of ``metrics.jsonl`` (malformed lines, e.g. from a crash mid-write, are skipped)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"run_dir: no metrics.jsonl in {run_dir}")
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _plot(path: Path, series: Dict[str, tuple], xlabel: str, title: str, logy: bool = False) -> bool:
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return False
    # matplotlib costs a second of import time: loaded when a plot is drawn, not with the CLI.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None, ms=3)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    if logy and all(y > 0 for _, ys in series.values() for y in ys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plot_*.png`` in ``run_dir``; returns the report path."""
    run_dir = Path(run_dir)
    recs = read_metrics(run_dir)
    steps = [r for r in recs if r.get("kind") == "step"]
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    term_keys = sorted({k for r in steps for k in r if k not in _TERM_SKIP})

    def ser(rs, key, x="step"):
        pts = [(r[x], r[key]) for r in rs if key in r and r[key] is not None]
        return ([p[0] for p in pts], [p[1] for p in pts])

    plots = []
    if _plot(
        run_dir / "plot_loss.png", {k: ser(steps, k) for k in term_keys}, "step", "loss and loss terms", logy=True
    ):
        plots.append(("Loss terms", "plot_loss.png"))
    if _plot(
        run_dir / "plot_accuracy.png",
        {k: ser(epochs, k, "epoch") for k in ("online_probe_acc", "knn_acc", "online_probe_train_acc")},
        "epoch",
        "accuracy (%)",
    ):
        plots.append(("Online probe and kNN accuracy", "plot_accuracy.png"))
    if _plot(
        run_dir / "plot_rank.png",
        {k: ser(epochs, k, "epoch") for k in ("backbone_rankme", "projector_rankme")},
        "epoch",
        "effective rank (RankMe)",
    ):
        plots.append(("Effective rank", "plot_rank.png"))
    if _plot(
        run_dir / "plot_collapse.png",
        {
            k: ser(epochs, k, "epoch")
            for k in ("backbone_norm_std", "projector_norm_std", "backbone_dead_frac", "projector_dead_frac")
        },
        "epoch",
        "std of normalised embeddings / dead fraction",
    ):
        plots.append(("Collapse diagnostics", "plot_collapse.png"))

    lines = [f"# Run report: {run_dir.name}", ""]
    cfgp = run_dir / "config.yaml"
    if cfgp.exists():
        cfg = yaml.safe_load(cfgp.read_text())
        lines += [
            f"- method: `{cfg['method']['name']}`, backbone `{cfg['model']['backbone']}`, dataset "
            f"`{cfg['data']['dataset']}`",
            f"- optimizer `{cfg['optim']['name']}` lr {cfg['optim']['lr']} batch {cfg['optim']['batch_size']}, "
            f"{cfg['train']['epochs']} epochs",
            "",
        ]
    if epochs:
        last = epochs[-1]
        lines += ["## Last epoch", "", "| metric | value |", "|---|---|"]
        for k in sorted(last):
            if k != "kind" and isinstance(last[k], (int, float)):
                lines.append(f"| {k} | {last[k]:.4g} |")
        lines.append("")
        lines += [
            "## Per epoch",
            "",
            "| epoch | loss | online probe % | kNN % | backbone RankMe | projector RankMe |",
            "|---|---|---|---|---|---|",
        ]
        fmt = lambda r, k: f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else "-"
        for r in epochs:
            lines.append(
                f"| {r['epoch']} | {fmt(r, 'loss')} | {fmt(r, 'online_probe_acc')} | {fmt(r, 'knn_acc')} | "
                f"{fmt(r, 'backbone_rankme')} | {fmt(r, 'projector_rankme')} |"
            )
        lines.append("")
    fe = run_dir / "final_eval.json"
    if fe.exists():
        res = json.loads(fe.read_text())
        lines += ["## Final evaluation (frozen backbone, test split)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in res.items() if isinstance(v, (int, float))]
        lines.append("")
    for title, f in plots:
        lines += [f"## {title}", "", f"![{title}]({f})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
