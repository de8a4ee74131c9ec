"""sslext-sweep: run a grid of cells resumably, record failures, aggregate into tables and plots."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sslext.app.config import ConfigError
from sslext.app.sweeps.report import paired_differences, t_quantile_975, write_report
from sslext.app.sweeps.run import cell_status, load_sweep, main, run_cell, run_sweep

REPO = Path(__file__).resolve().parents[1]

TINY_BASE = {
    "name": "tiny",
    "seed": 0,
    "method": {"name": "vicreg", "projector": [32, 32]},
    "model": {"backbone": "resnet10", "width": 8},
    "data": {"dataset": "synthetic", "train_limit": 128},
    "optim": {"batch_size": 32, "warmup_epochs": 0},
    "train": {"epochs": 1, "threads": 1, "log_every": 1, "checkpoint_every_steps": 2, "device": "cpu", "amp": False},
    "eval": {"offline_epochs": 2, "knn_k": 10, "diag_samples": 64, "knn_train_limit": 64},
    "augment": {"view1": {"crop_size": 16}, "view2": {"crop_size": 16}},
}


def write_sweep(tmp_path, rows, seeds=(0,), **extra):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    spec = {
        "name": "t",
        "base": "base.yaml",
        "budget": {"epochs": 2},
        "seeds": list(seeds),
        "rows": rows,
        "runs_dir": str(tmp_path / "runs"),
        "results_dir": str(tmp_path / "results"),
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_sweep_runs_every_cell_reports_and_skips_finished_cells(tmp_path):
    path = write_sweep(
        tmp_path,
        [
            {"name": "random_init", "train": False},
            {"name": "vicreg"},
            {
                "name": "proposal",
                "set": {"method.name": "vicreg_tico", "method.projector": [32, 32], "method.variant": "proposal"},
            },
        ],
        seeds=(0, 1),
        compare={"baseline": "vicreg"},
    )
    sweep = load_sweep(path)
    counts = run_sweep(sweep, jobs=2, progress=False)
    assert counts["done"] == 6 and counts["failed"] == 0, counts
    recs = {c.name: json.loads(sweep.record_path(c).read_text()) for c in sweep.cells}
    assert all(r["status"] == "done" for r in recs.values())
    assert recs["vicreg-s1"]["steps"] == 8 and recs["random_init-s0"]["steps"] == 0  # 2 epochs of 4 steps
    assert recs["proposal-s0"]["config"]["method"]["variant"] == "proposal"
    assert len(recs["vicreg-s0"]["epochs"]) == 2 and "knn_acc" in recs["vicreg-s0"]["epochs"][-1]
    assert recs["vicreg-s0"]["final_eval"]["projector_spectrum"][0] == pytest.approx(1.0)

    md = write_report(sweep)
    text = md.read_text()
    assert "Paired differences" in text and "| proposal | vicreg |" in text
    for c in sweep.cells:  # every number names its run
        assert str(sweep.run_dir(c)) in text
    lines = (tmp_path / "results" / "results.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("cell,row,method,seed,status")
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    lin = res["rows"]["vicreg"]["metrics"]["linear_acc"]
    assert lin["n"] == 2 and len(lin["run_dirs"]) == 2
    for f in ("plot_final.png", "plot_curves.png", "plot_spectrum.png"):
        assert (tmp_path / "results" / f).stat().st_size > 0

    # A rerun trains nothing: every cell is done.
    before = {c.name: sweep.record_path(c).stat().st_mtime_ns for c in sweep.cells}
    again = run_sweep(load_sweep(path), jobs=1, progress=False)
    assert again["skipped"] == 6 and again["done"] == 0
    assert before == {c.name: sweep.record_path(c).stat().st_mtime_ns for c in sweep.cells}


def test_diverged_cell_is_a_finished_result(tmp_path):
    # A non-finite loss is the cell's deterministic outcome: recorded with where it
    # happened, reported, and never retrained.
    path = write_sweep(tmp_path, [{"name": "vicreg"}, {"name": "diverges", "set": {"optim.lr": 1.0e30}}])
    assert main(["run", str(path), "--no-report"]) == 0  # divergence is a result, not a runner failure
    sweep = load_sweep(path)
    rec = json.loads(sweep.record_path(sweep.cell("diverges-s0")).read_text())
    assert rec["status"] == "diverged" and "non-finite" in rec["error"]
    assert isinstance(rec["diverged_at_step"], int) and rec["diverged_at_step"] >= 1
    assert rec["diverged_at_epoch"] == 0 and "loss" in rec["error"] and rec["terms_at_divergence"]
    assert cell_status(sweep, sweep.cell("diverges-s0")) == "diverged"
    assert cell_status(sweep, sweep.cell("vicreg-s0")) == "done"
    assert main(["report", str(path)]) == 0
    text = (tmp_path / "results" / "results.md").read_text()
    assert "## Diverged cells" in text and f"`diverges-s0`: epoch 0, step {rec['diverged_at_step']}" in text
    assert "| diverges | 0/1 (1 diverged) |" in text and "1 done, 1 diverged, 0 failed" in text
    assert "No seed where both rows finished" not in text  # no baseline in this sweep

    def no_nan(const):
        raise AssertionError(f"not strict JSON: {const}")

    # The std of a single seed and the NaN loss terms stay strict JSON (null, "nan").
    json.loads((tmp_path / "results" / "results.json").read_text(), parse_constant=no_nan)
    strict = json.loads(sweep.record_path(sweep.cell("diverges-s0")).read_text(), parse_constant=no_nan)
    assert strict["terms_at_divergence"] == rec["terms_at_divergence"]
    counts = run_sweep(sweep, progress=False)
    assert counts == {"done": 0, "diverged": 0, "failed": 0, "interrupted": 0, "skipped": 2, "stopped_by": None}


def test_failed_cell_is_recorded_with_its_error_then_retried(tmp_path):
    missing = tmp_path / "no_data"
    path = write_sweep(
        tmp_path,
        [{"name": "vicreg"}, {"name": "broken", "set": {"data.dataset": "cifar10", "data.root": str(missing)}}],
    )
    assert main(["run", str(path), "--no-report"]) == 1  # a failed cell is an error exit
    sweep = load_sweep(path)
    rec = json.loads(sweep.record_path(sweep.cell("broken-s0")).read_text())
    assert rec["status"] == "failed" and rec["returncode"] == 1
    assert "cifar-10-batches-py" in rec["error"] and "data.root" in rec["error"]
    assert cell_status(sweep, sweep.cell("vicreg-s0")) == "done"
    assert main(["report", str(path)]) == 0
    text = (tmp_path / "results" / "results.md").read_text()
    assert "## Failed cells" in text and "broken-s0" in text
    # The next run retries the failed cell (and fails again), never the done one.
    counts = run_sweep(sweep, progress=False)
    assert counts == {"done": 0, "diverged": 0, "failed": 1, "interrupted": 0, "skipped": 1, "stopped_by": None}
    # The log keeps both attempts; the (committed) record holds only the last one's
    # error, without the command line that names this machine's interpreter.
    log = (tmp_path / "runs" / "broken-s0.log").read_text()
    assert log.count("=== ") == 2 and sys.executable in log
    err = json.loads(sweep.record_path(sweep.cell("broken-s0")).read_text())["error"]
    assert err.count("no 'cifar-10-batches-py' folder") == 1 and "===" not in err and sys.executable not in err


def test_killed_cell_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, [{"name": "vicreg"}])
    monkeypatch.setenv("SSLEXT_TEST_FAULT", "kill:step:5")  # SIGKILL mid-training, after the step-4 checkpoint
    first = run_sweep(load_sweep(path), progress=False)
    assert first["failed"] == 1
    sweep = load_sweep(path)
    cell = sweep.cell("vicreg-s0")
    assert json.loads(sweep.record_path(cell).read_text())["returncode"] == -9
    assert cell_status(sweep, cell) == "failed" and (sweep.run_dir(cell) / "last.pt").exists()
    monkeypatch.delenv("SSLEXT_TEST_FAULT")
    assert run_sweep(sweep, progress=False)["done"] == 1
    resumed = json.loads(sweep.record_path(cell).read_text())
    # The same cell from scratch, elsewhere (--out): identical numbers, bit for bit.
    fresh_sweep = load_sweep(path, out=tmp_path / "fresh")
    assert run_sweep(fresh_sweep, progress=False)["done"] == 1
    fresh = json.loads(fresh_sweep.record_path(fresh_sweep.cell("vicreg-s0")).read_text())
    timing = {"eval_seconds"}  # wall-clock, the one entry that may differ
    assert {k: v for k, v in resumed["final_eval"].items() if k not in timing} == {
        k: v for k, v in fresh["final_eval"].items() if k not in timing
    }
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in fresh["epochs"]]
    assert str(tmp_path / "fresh" / "runs") in fresh["run_dir"]


def test_only_runs_one_row_or_cell(tmp_path):
    path = write_sweep(tmp_path, [{"name": "a", "train": False}, {"name": "b", "train": False}], seeds=(0, 1))
    assert main(["run", str(path), "--only", "a-s1", "--no-report"]) == 0
    sweep = load_sweep(path)
    assert [cell_status(sweep, c) for c in sweep.cells] == ["pending", "done", "pending", "pending"]
    assert main(["run", str(path), "--only", "b", "--no-report"]) == 0
    assert [cell_status(sweep, c) for c in sweep.cells] == ["pending", "done", "done", "done"]
    assert main(["run", str(path), "--only", "c"]) == 2  # names neither a cell nor a row


@pytest.mark.parametrize(
    "change,key",
    [
        ({"bogus": 1}, "bogus"),
        ({"rows": [{"name": "a", "colour": 1}]}, "rows[0].colour"),
        ({"rows": [{"name": "a"}, {"name": "a"}]}, "rows[1].name"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"compare": {"baseline": "zzz"}}, "compare.baseline"),
        ({"rows": [{"name": "a", "baseline": "zzz"}]}, "rows[0].baseline"),
        ({"compare": {"pairs": [["a", "zzz"]]}}, "compare.pairs[0]"),
        ({"compare": {"pairs": [["a", "a"]]}}, "compare.pairs[0]"),
        ({"compare": {"pairs": "a"}}, "compare.pairs"),
        ({"compare": {"baseline": "a", "colour": 1}}, "compare"),
        ({"budget": {"epochs": 0}}, "budget.epochs"),
        ({"base": "missing.yaml"}, "base"),
        ({"rows": [{"name": "a"}, {"name": "b", "set": {"optim.batch_size": 64}}]}, "budget"),
        ({"rows": [{"name": "a", "set": {"optim.lrr": 0.1}}]}, "optim.lrr"),
    ],
)
def test_sweep_file_errors_name_the_key(tmp_path, change, key):
    path = write_sweep(tmp_path, [{"name": "a"}])
    spec = yaml.safe_load(path.read_text())
    spec.update(change)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_sweep(path)


def test_paired_interval_matches_the_t_distribution(tmp_path):
    path = write_sweep(tmp_path, [{"name": "base", "train": False}, {"name": "other", "train": False}], seeds=(0, 1, 2))
    sweep = load_sweep(path)
    values = {"base": [50.0, 52.0, 51.0], "other": [51.0, 54.0, 51.5]}
    recs = {
        f"{r}-s{s}": {"status": "done", "seed": s, "run_dir": "x", "final_eval": {"linear_acc": v}}
        for r, vs in values.items()
        for s, v in zip((0, 1, 2), vs)
    }
    d = paired_differences(sweep, recs, "base", metrics=("linear_acc",))["other"]["linear_acc"]
    diffs = [1.0, 2.0, 0.5]
    mean = sum(diffs) / 3
    sd = (sum((x - mean) ** 2 for x in diffs) / 2) ** 0.5
    half = 4.303 * sd / 3**0.5
    assert d["mean"] == pytest.approx(mean) and d["ci95"] == pytest.approx([mean - half, mean + half])
    assert d["excludes_zero"] == (mean - half > 0)
    assert t_quantile_975(2) == 4.303 and t_quantile_975(100) == 1.96


def test_pairs_only_join_cells_of_one_cpu_model(tmp_path):
    # A seed whose two cells ran on different CPU models is left out of the
    # difference and named; cells without a recorded model pair only with each other.
    path = write_sweep(
        tmp_path,
        [{"name": "base", "train": False}, {"name": "other", "train": False}],
        seeds=(0, 1, 2),
        compare={"baseline": "base"},
    )
    sweep = load_sweep(path)
    cpus = {"base": ["X", "X", None], "other": ["X", "Y", None]}
    recs = {}
    for r, vs in {"base": [50.0, 52.0, 51.0], "other": [51.0, 54.0, 51.5]}.items():
        for s, v in zip((0, 1, 2), vs):
            rec = {"status": "done", "seed": s, "run_dir": "x", "final_eval": {"linear_acc": v}}
            if cpus[r][s]:
                rec["cpu"] = cpus[r][s]
            recs[f"{r}-s{s}"] = rec
    d = paired_differences(sweep, recs, "base", metrics=("linear_acc",))["other"]["linear_acc"]
    assert d["per_seed"] == {0: 1.0, 2: 0.5} and d["cross_cpu_seeds"] == [1]
    recs["other-s0"]["cpu"] = recs["other-s2"]["cpu"] = "Y"
    d = paired_differences(sweep, recs, "base", metrics=("linear_acc",))["other"]["linear_acc"]
    assert d["n"] == 0 and d["cross_cpu_seeds"] == [0, 1, 2]
    for c in sweep.cells:
        sweep.record_path(c).parent.mkdir(parents=True, exist_ok=True)
        sweep.record_path(c).write_text(json.dumps({**recs[c.name], "cell": c.name, "row": c.row}))
    md = write_report(sweep).read_text()
    assert "not paired: seeds [0, 1, 2] ran on different CPU models" in md
    assert "| other-s1 | done | - | - | Y |" in md


def test_nested_set_means_dotted_keys(tmp_path):
    path = write_sweep(
        tmp_path,
        [{"name": "a"}, {"name": "b", "set": {"method": {"name": "simclr", "temperature": 0.3}, "optim": {"lr": 0.2}}}],
    )
    sweep = load_sweep(path)
    cfg = sweep.config(sweep.cell("b-s0"))
    assert cfg["method"]["name"] == "simclr" and cfg["method"]["temperature"] == 0.3
    assert "inv_coeff" not in cfg["method"]  # switching method dropped the base's keys
    assert cfg["optim"]["lr"] == 0.2


def test_compare_pairs_are_reported_seed_by_seed(tmp_path):
    # compare.pairs adds comparisons between non-baseline rows (e.g. one beta
    # against another) to the tables and results.json.
    # Row c never finishes (every cell failed): its comparisons are named as impossible, not dropped.
    path = write_sweep(
        tmp_path,
        [
            {"name": "base", "train": False},
            {"name": "a", "train": False},
            {"name": "b", "train": False},
            {"name": "c", "train": False},
        ],
        seeds=(0, 1, 2),
        compare={"baseline": "base", "pairs": [["b", "a"], ["c", "a"]]},
    )
    sweep = load_sweep(path)
    values = {"base": [50.0, 52.0, 51.0], "a": [51.0, 54.0, 51.5], "b": [53.0, 53.0, 52.5], "c": [None] * 3}
    for r, vs in values.items():
        for s, v in zip((0, 1, 2), vs):
            rec = {
                "status": "done",
                "cell": f"{r}-s{s}",
                "row": r,
                "seed": s,
                "run_dir": f"runs/{r}-s{s}",
                "final_eval": {"linear_acc": v, "linear_acc_10pct": v, "knn_acc": v},
            }
            if v is None:
                rec = {
                    "status": "failed",
                    "cell": f"{r}-s{s}",
                    "row": r,
                    "seed": s,
                    "returncode": 1,
                    "run_dir": f"runs/{r}-s{s}",
                    "error": "DatasetError: no data",
                }
            sweep.record_path(sweep.cell(f"{r}-s{s}")).parent.mkdir(parents=True, exist_ok=True)
            sweep.record_path(sweep.cell(f"{r}-s{s}")).write_text(json.dumps(rec))
    md = write_report(sweep).read_text()
    assert "Further paired comparisons" in md
    assert "| b | a | linear probe, 100 % labels (%) | +0.67 |" in md and "s0: +2.00, s1: -1.00, s2: +1.00" in md
    assert "No seed where both rows finished, so no difference: c − base" in md
    assert "No seed where both rows finished, so no difference: c − a" in md
    res = json.loads((sweep.results_dir / "results.json").read_text())["paired_differences"]
    pair, empty = res["pairs"]
    assert pair["row"] == "b" and pair["baseline"] == "a"
    assert pair["metrics"]["knn_acc"]["per_seed"] == {"0": 2.0, "1": -1.0, "2": 1.0}
    assert empty == {"row": "c", "baseline": "a", "metrics": {}}
    assert set(res["rows"]) == {"a", "b"}  # the baseline comparisons are unchanged


@pytest.mark.parametrize(
    "name",
    [
        "seed_question_cpu_methods",
        "seed_question_cpu_budget10",
        "seed_question_cpu_budget30",
        "seed_question_cpu_tune_val",
    ],
)
def test_shipped_study_extensions_validate(name):
    sweep = load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
    cfgs = [sweep.config(c) for c in sweep.cells]
    assert {c["model"]["backbone"] for c in cfgs} == {"resnet10"} and {c["model"]["width"] for c in cfgs} == {16}
    assert {c["optim"]["batch_size"] for c in cfgs} == {256}
    if name.endswith("methods"):
        assert {c["method"]["name"] for c in cfgs} == {"simclr", "mocov2", "byol", "simsiam", "rotnet", "jigsaw", "cpc"}
    if "budget" in name:
        # The warm-up keeps its third of training.
        assert [c["optim"]["warmup_epochs"] / c["train"]["epochs"] for c in cfgs] == pytest.approx([1 / 3] * len(cfgs))
    if name.endswith("tune_val"):
        assert {c["eval"]["split"] for c in cfgs} == {"val"}  # tuning never reads test


@pytest.mark.parametrize("name", ["seed_question_cpu", "seed_question_cpu_tune", "seed_question_gpu"])
def test_shipped_sweeps_validate(name):
    sweep = load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml")
    assert len(sweep.seeds) >= (3 if name != "seed_question_cpu_tune" else 1)
    methods = {sweep.config(c)["method"]["name"] for c in sweep.cells if c.train}
    if name != "seed_question_cpu_tune":
        assert methods == {"vicreg", "vicreg_tico", "tico", "barlow_twins"}
        variants = {
            (sweep.config(c)["method"].get("variant"), sweep.config(c)["method"].get("beta"))
            for c in sweep.cells
            if c.train and sweep.config(c)["method"]["name"] == "vicreg_tico"
        }
        assert variants == {("symmetric", 0.0), ("symmetric", 0.9), ("symmetric", 0.99), ("proposal", 0.9)}


def test_gpu_sweep_dry_run_on_the_cpu(tmp_path):
    """Every row of the GPU study, seed 0, both backbones, a few steps on synthetic data."""
    # 8 px crops and float32: the smallest inputs a CIFAR-stem ResNet takes, and
    # no per-shape bf16 kernel set-up, which dominates a two-step run on a CPU.
    tiny = [
        "data.dataset=synthetic",
        "data.train_limit=16",
        "data.test_limit=32",
        "optim.batch_size=8",
        "train.epochs=1",
        "optim.warmup_epochs=0",
        "train.threads=2",
        "eval.offline_epochs=1",
        "eval.knn_k=5",
        "eval.diag_samples=32",
        "eval.knn_train_limit=32",
        "eval.batch_size=32",
        "augment.view1.crop_size=8",
        "augment.view2.crop_size=8",
        "train.amp=false",
        "train.channels_last=false",
        "train.device=cpu",
    ]
    sweep = load_sweep(REPO / "configs" / "sweeps" / "seed_question_gpu.yaml", out=tmp_path, extra=tiny)
    cells = [c for c in sweep.cells if c.seed == 0]
    assert len(cells) == 18
    for c in cells:
        assert run_cell(sweep, c) == 0
        rec = json.loads(sweep.record_path(c).read_text())
        assert rec["steps"] == (2 if c.train else 0)
        assert rec["cpu"] and rec["cpu"] != "unrecorded" and rec["machine"]  # pairs join cells of one CPU model
        assert rec["config"]["model"]["backbone"] == ("resnet50" if c.row.startswith("r50") else "resnet18")
    assert "r50_vicreg_tico_proposal" in write_report(sweep).read_text()


_NICE_SCRIPT = """
import os, subprocess, sys
from sslext.app.sweeps.run import keep_niceness
os.nice(7)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
try:
    keep_niceness(child.pid)
    print(open(f"/proc/{child.pid}/autogroup").read().strip())
finally:
    child.kill()
"""


@pytest.mark.skipif(
    not os.access("/proc/self/autogroup", os.W_OK), reason="no scheduler autogroups here, or /proc is read-only"
)
def test_a_niced_runner_keeps_its_cells_niced_across_their_sessions():
    # Each cell is its own session, so its own autogroup: there nice alone would not yield the CPU.
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _NICE_SCRIPT], capture_output=True, text=True, timeout=120, cwd=root, check=True
    ).stdout
    assert out.strip().endswith("nice 7"), out
