"""What the command lines print: help without internals, a short end-of-run summary."""

import json

import pytest

from sslext.app.sweeps import run as sweep
from sslext.train import short_summary


def test_sweep_help_lists_public_commands_only(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    out = capsys.readouterr().out
    assert "==SUPPRESS==" not in out and "_cell" not in out
    assert "{run,report,status}" in out


@pytest.mark.parametrize("cmd", ["run", "report", "status"])
def test_sweep_file_argument_has_help(cmd, capsys):
    with pytest.raises(SystemExit):
        sweep.main([cmd, "--help"])
    out = capsys.readouterr().out
    assert "the sweep file (YAML" in out


def test_train_summary_is_short_and_says_where_the_record_is(tmp_path):
    run_dir = tmp_path / "run"
    spectrum = [1.0 / (i + 1) for i in range(512)]
    summary = {
        "run_dir": str(run_dir),
        "global_step": 4,
        "epoch": 1,
        "finished": True,
        "interrupted": None,
        "report": str(run_dir / "report.md"),
        "final_eval": {
            "linear_acc": 33.5,
            "knn_acc": 25.0,
            "backbone_rankme": 2.7,
            "backbone_std_mean": 5.3,
            "backbone_spectrum": spectrum,
            "projector_spectrum": spectrum,
        },
    }
    text = json.dumps(short_summary(summary), indent=2)
    assert len(text.splitlines()) < 30
    out = json.loads(text)
    assert out["finished"] is True and out["global_step"] == 4
    assert out["final_eval"] == {"linear_acc": 33.5, "knn_acc": 25.0, "backbone_rankme": 2.7}
    assert out["full_record"] == {
        "final_eval": str(run_dir / "final_eval.json"),
        "metrics": str(run_dir / "metrics.jsonl"),
        "report": str(run_dir / "report.md"),
    }
    # a run without a final evaluation names no final_eval.json
    assert short_summary({"run_dir": str(run_dir), "finished": False})["full_record"]["final_eval"] is None
