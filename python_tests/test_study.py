"""python -m sslext.app.sweeps.study: the lr table (tuned on val, reported on test) and the budget trend, from records alone."""

import json

import pytest
import yaml
from test_sweep import TINY_BASE

from sslext.app.sweeps.spec import load_sweep
from sslext.app.sweeps.study import budget_trend, lr_table, main, missing_test_sweep, pairs_table

VT = {"method.name": "vicreg_tico", "method.projector": [32, 32], "method.beta": 0.9}


def _sweep(tmp_path, name, rows, seeds, epochs=2, **extra):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    spec = {
        "name": name,
        "base": "base.yaml",
        "budget": {"epochs": epochs},
        "seeds": list(seeds),
        "rows": rows,
        "runs_dir": str(tmp_path / "runs" / name),
        "results_dir": str(tmp_path / "results" / name),
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _record(sweep, row, seed, lr, split, metrics, rankme=(), cpu="cpu A"):
    cell = f"{row}-s{seed}"
    rec = {
        "status": "done",
        "cell": cell,
        "row": row,
        "seed": seed,
        "run_dir": f"runs/{cell}",
        "cpu": cpu,
        "config": {"optim": {"lr": lr}, "eval": {"split": split}},
        "final_eval": metrics,
        "epochs": [{"backbone_rankme": r} for r in rankme],
    }
    path = sweep.record_path(next(c for c in sweep.cells if c.name == cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def _tuning(tmp_path):
    rows = [{"name": f"vicreg-lr{lr}", "set": {"optim.lr": lr}} for lr in (0.1, 0.3)]
    rows += [{"name": f"vt-lr{lr}", "label": f"VT, lr {lr}", "set": {**VT, "optim.lr": lr}} for lr in (0.1, 0.3)]
    path = _sweep(tmp_path, "tune", rows, [0], set={"eval.split": "val"})
    tune = load_sweep(path)
    for row, lr, acc in (
        ("vicreg-lr0.1", 0.1, 40.0),
        ("vicreg-lr0.3", 0.3, 45.0),
        ("vt-lr0.1", 0.1, 44.0),
        ("vt-lr0.3", 0.3, 41.0),
    ):
        _record(tune, row, 0, lr, "val", {"linear_acc_10pct": acc})
    return path, tune


def test_lr_table_picks_each_best_lr_on_val_and_reports_test_cells_at_both(tmp_path):
    tune_path, tune = _tuning(tmp_path)
    test = load_sweep(_sweep(tmp_path, "study", [{"name": "vicreg"}, {"name": "vt", "set": VT}], [0, 1]))
    for s, (a, b) in enumerate(((60.0, 55.0), (62.0, 57.0))):
        _record(test, "vicreg", s, 0.3, "test", {"linear_acc": a})
        _record(test, "vt", s, 0.3, "test", {"linear_acc": b})
    table = lr_table(tune, [test], "vicreg", "linear_acc_10pct", "linear_acc")
    assert table["baseline_lr"] == 0.3
    vt = table["rows"]["vt"]
    assert vt["best_lr"] == 0.1 and vt["val"] == {0.1: 44.0, 0.3: 41.0}
    assert vt["at"]["baseline_lr"]["mean"] == pytest.approx(56.0) and vt["at"]["baseline_lr"]["n"] == 2
    assert vt["at"]["own_lr"]["n"] == 0  # vt at 0.1 on test was never run
    # The missing cells become a sweep that loads, inherits the base, and drops the val split.
    spec = missing_test_sweep(table, tune, [0, 1, 2], "best", str(tmp_path / "results" / "best"))
    assert [r["name"] for r in spec["rows"]] == ["vicreg-lr0.3", "vt-lr0.3", "vt-lr0.1"]
    assert spec["rows"][2]["set"]["optim.lr"] == 0.1 and spec["rows"][2]["set"]["method.beta"] == 0.9
    assert "set" not in spec  # eval.split: val was the tuning's only setting
    out = tmp_path / "best.yaml"
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    best = load_sweep(out)
    assert best.config(best.cell("vt-lr0.1-s2"))["eval"]["split"] == "test"
    # Once run, those cells fill the table (rows named <row>-lr<lr> count for <row>).
    for s in (0, 1, 2):
        _record(best, "vt-lr0.1", s, 0.1, "test", {"linear_acc": 58.0 + s})
    table = lr_table(tune, [test, best], "vicreg", "linear_acc_10pct", "linear_acc")
    assert table["rows"]["vt"]["at"]["own_lr"]["mean"] == pytest.approx(59.0)


def test_best_lr_waits_for_the_whole_grid_and_never_picks_a_diverged_lr(tmp_path, capsys):
    rows = [{"name": f"vt-lr{lr}", "label": f"VT, lr {lr}", "set": {**VT, "optim.lr": lr}} for lr in (0.1, 0.3, 1.0)]
    rows.insert(0, {"name": "vicreg-lr0.3", "set": {"optim.lr": 0.3}})
    path = _sweep(tmp_path, "tune", rows, [0], set={"eval.split": "val"})
    tune = load_sweep(path)
    test = _sweep(tmp_path, "study", [{"name": "vicreg"}], [0])
    _record(tune, "vicreg-lr0.3", 0, 0.3, "val", {"linear_acc_10pct": 45.0})
    _record(tune, "vt-lr0.1", 0, 0.1, "val", {"linear_acc_10pct": 40.0})
    # Two of vt's three cells are missing: the best of what exists is not the grid's best.
    vt = lr_table(tune, [], "vicreg", "linear_acc_10pct", "linear_acc")["rows"]["vt"]
    assert vt["best_lr"] is None and vt["pending"] == 2
    out, sweep_file = tmp_path / "study_out", tmp_path / "best.yaml"
    args = ["lr", "--tuning", str(path), "--test", str(test), "--out", str(out), "--write-sweep", str(sweep_file)]
    assert main(args) == 0
    assert "| VT | 40.00 | - | - | pending (2 cells left) |" in (out / "lr.md").read_text()
    assert not sweep_file.exists() and "the tuning is not finished (2 cells left" in capsys.readouterr().out
    # lr 1.0 diverges, lr 0.3 finishes below 0.1: the grid is settled, 0.1 is the best, 1.0 is shown as diverged,
    # and the diverged cell does not hold back the best-lr sweep.
    cell = next(c for c in tune.cells if c.name == "vt-lr1.0-s0")
    tune.record_path(cell).write_text(
        json.dumps({"status": "diverged", "cell": cell.name, "row": "vt-lr1.0", "seed": 0})
    )
    _record(tune, "vt-lr0.3", 0, 0.3, "val", {"linear_acc_10pct": 38.0})
    vt = lr_table(tune, [], "vicreg", "linear_acc_10pct", "linear_acc")["rows"]["vt"]
    assert vt["best_lr"] == 0.1 and vt["diverged_lrs"] == [1.0] and vt["pending"] == 0
    assert main(args) == 0
    assert "| VT | 40.00 | 38.00 | diverged | 0.1 |" in (out / "lr.md").read_text()
    assert [r["name"] for r in yaml.safe_load(sweep_file.read_text())["rows"]] == [
        "vicreg-lr0.3",
        "vt-lr0.3",
        "vt-lr0.1",
    ]


def test_tuning_cells_scored_on_test_are_refused(tmp_path):
    rows = [{"name": "vicreg-lr0.3", "set": {"optim.lr": 0.3}}]
    tune = load_sweep(_sweep(tmp_path, "tune", rows, [0]))
    _record(tune, "vicreg-lr0.3", 0, 0.3, "test", {"linear_acc_10pct": 1.0})
    with pytest.raises(Exception, match="scored on 'test', not on val"):
        lr_table(tune, [], "vicreg", "linear_acc_10pct", "linear_acc")


def test_budget_trend_pairs_seeds_within_one_cpu_and_writes_plot(tmp_path):
    rows = [{"name": "vicreg"}, {"name": "vt", "set": VT}]
    short = load_sweep(_sweep(tmp_path, "b2", rows, [0, 1, 2], epochs=2))
    long = load_sweep(_sweep(tmp_path, "b4", rows, [0], epochs=4))
    for s in (0, 1, 2):
        _record(short, "vicreg", s, 0.3, "test", {"linear_acc": 50.0 + s}, rankme=[5, 6])
        _record(
            short, "vt", s, 0.3, "test", {"linear_acc": 48.0 + 2 * s}, rankme=[4, 5], cpu="cpu B" if s == 2 else "cpu A"
        )
    _record(long, "vicreg", 0, 0.3, "test", {"linear_acc": 60.0}, rankme=[5, 6, 7, 8])
    _record(long, "vt", 0, 0.3, "test", {"linear_acc": 59.5}, rankme=[4, 5, 6, 7])
    trend = budget_trend({2: short, 4: long}, "vicreg", ["vt"], "linear_acc")
    gap2 = trend["rows"]["vt"][2]
    assert gap2["per_seed"] == {0: -2.0, 1: -1.0} and gap2["cross_cpu_seeds"] == [2]
    assert trend["rows"]["vt"][4]["mean"] == pytest.approx(-0.5)
    out = tmp_path / "study"
    rc = main(["budget", "--sweep", f"2={short.path}", "--sweep", f"4={long.path}", "--rows", "vt", "--out", str(out)])
    assert rc == 0
    assert (out / "plot_budget.png").stat().st_size > 0
    assert "-1.50" in (out / "budget.md").read_text()


def test_cli_names_a_bad_budget_argument(tmp_path, capsys):
    assert main(["budget", "--sweep", "ten=x.yaml", "--rows", "vt", "--out", str(tmp_path)]) == 2
    assert "--sweep: expected EPOCHS=SWEEP_FILE" in capsys.readouterr().err


def test_pairs_table_gives_each_pair_and_the_gap_to_the_baseline(tmp_path):
    rows = [
        {"name": "vicreg", "label": "VICReg"},
        {"name": "vt", "label": "VT detached", "set": VT},
        {"name": "vt_graph", "label": "VT graph", "set": {**VT, "method.batch_cov_in_graph": True}},
        {"name": "vt_bc", "label": "VT bias-corrected", "set": {**VT, "method.bias_correction": True}},
        {"name": "vt_hot", "label": "VT lr 10", "set": {**VT, "optim.lr": 10.0}},
    ]
    compare = {"baseline": "vicreg", "pairs": [["vt_graph", "vt"], ["vt_bc", "vt"], ["vt_hot", "vt"]]}
    sweep = load_sweep(_sweep(tmp_path, "study", rows, [0, 1, 2], compare=compare))
    for s in (0, 1, 2):
        _record(sweep, "vicreg", s, 0.3, "test", {"linear_acc": 60.0 + s})
        _record(sweep, "vt", s, 0.3, "test", {"linear_acc": 50.0 + s})
        # seed 2 of the graph row ran on another CPU model: paired with neither row
        _record(sweep, "vt_graph", s, 0.3, "test", {"linear_acc": 52.0 + 2 * s}, cpu="cpu B" if s == 2 else "cpu A")
    for s in (0, 1):
        rec = sweep.record_path(next(c for c in sweep.cells if c.name == f"vt_hot-s{s}"))
        rec.write_text(json.dumps({"status": "diverged", "cell": f"vt_hot-s{s}", "row": "vt_hot", "seed": s}))
    table = pairs_table(sweep, "linear_acc")
    graph, bc, hot = table["rows"]
    assert graph["row"] == "vt_graph" and graph["other"] == "vt" and graph["other_label"] == "VT detached"
    assert graph["vs_other"]["per_seed"] == {0: 2.0, 1: 3.0} and graph["vs_other"]["cross_cpu_seeds"] == [2]
    assert graph["vs_baseline"]["per_seed"] == {0: -8.0, 1: -7.0}
    assert graph["value"]["n"] == 3 and graph["value"]["mean"] == pytest.approx(54.0)
    assert bc["vs_other"] == {"n": 0} and bc["value"] == {"n": 0}  # never run: kept, not dropped
    out = tmp_path / "pairs"
    assert main(["pairs", "--sweep", str(sweep.path), "--out", str(out)]) == 0
    md = (out / "pairs.md").read_text()
    assert "| VT graph | VT detached | +2.50 [" in md and "(n=2) | -7.50 [" in md
    assert "| VT bias-corrected | VT detached | not run | not run | not run |" in md
    assert hot["n_diverged"] == 2 and "| VT lr 10 | VT detached | not run | not run | diverged 2 of 3 |" in md
    assert json.loads((out / "pairs.json").read_text())["rows"][0]["row"] == "vt_graph"
