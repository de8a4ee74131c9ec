import json

import pytest
import torch

from sslext.app.config import load_config
from sslext.app.methods import METHODS
from sslext.train import NonFiniteLossError, Trainer, load_checkpoint_file, main, train

TINY = [
    "data.dataset=synthetic",
    "model.backbone=resnet10",
    "model.width=8",
    "optim.batch_size=32",
    "optim.warmup_epochs=1",
    "train.threads=2",
    "train.progress=false",
    "eval.offline_epochs=3",
    "eval.knn_k=20",
    "eval.diag_samples=64",
    "train.log_every=1",
    "augment.view1.crop_size=16",
    "augment.view2.crop_size=16",
    "train.device=cpu",
    "train.amp=false",
]


# Pretext-task methods (no projector) at crop 16: a 3x3 jigsaw of 4 px tiles
# in 5 px cells, a 3x3 CPC grid of 8 px patches (so at most 2 steps ahead).
PRETEXT_TINY = {
    "rotnet": ["method.head=[32]"],
    "jigsaw": ["method.tile_dim=8", "method.hidden=[32]", "method.num_permutations=10"],
    "cpc": ["method.steps=2", "method.context_dim=16", "method.context_layers=1"],
}

# Tiny heads per method; methods not listed take a 32-32 projector.
TINY_HEADS = {
    "tico": ["method.hidden_dim=32", "method.out_dim=16"],
    "simclr": ["method.projector=[32,16]"],
    # 64 keys per step (batch 32, symmetric) into 96 slots: the pointer wraps mid-batch
    "mocov2": ["method.projector=[32,16]", "method.queue_size=96"],
    "byol": ["method.projector=[32,16]", "method.predictor_hidden=32"],
    "simsiam": ["method.projector=[32,32,16]", "method.predictor_hidden=8"],
    **PRETEXT_TINY,
}


def tiny_cfg(tmp_path, method="vicreg", *extra):
    head = TINY_HEADS.get(method, ["method.projector=[32,32]"])
    return load_config(
        None, [f"method.name={method}", *head, f"train.out_dir={tmp_path}", "name=run", "train.epochs=2", *TINY, *extra]
    )


def _losses(run_dir):
    return [
        r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"
    ]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_end_to_end_each_method(tmp_path, method):
    torch.set_num_threads(2)
    summary = train(tiny_cfg(tmp_path, method))
    run = tmp_path / "run"
    assert summary["finished"] and summary["global_step"] == 16
    losses = _losses(run)
    assert len(losses) == 16 and all(map(lambda v: v == v, losses))
    for f in (
        "last.pt",
        "metrics.csv",
        "report.md",
        "plot_loss.png",
        "plot_accuracy.png",
        "final_eval.json",
        "config.yaml",
    ):
        assert (run / f).exists(), f
    fe = summary["final_eval"]
    for k in ("linear_acc", "linear_acc_10pct", "knn_acc", "backbone_rankme"):
        assert k in fe
    # pretext methods have no projector, hence no projector diagnostics
    assert ("projector_dead_frac" in fe) == (method not in PRETEXT_TINY)
    ck = load_checkpoint_file(run / "last.pt")
    assert ck["global_step"] == 16 and ck["epoch"] == 2
    if method in ("tico", "vicreg_tico"):
        # running covariance buffer of the loss must be checkpointed
        assert any(k.startswith("loss_fn.") for k in ck["method"]), list(ck["method"])
    if method == "mocov2":
        # queue contents, pointer and key encoder are part of the checkpoint
        assert {"queue.keys", "queue.ptr"} <= set(ck["method"]) and int(ck["method"]["queue.ptr"]) == 16 * 64 % 96
        assert any(k.startswith("key_backbone.") for k in ck["method"])
    if method == "byol":
        assert any(k.startswith("target_backbone.") for k in ck["method"])
    epochs = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert len(epochs) == 2 and "online_probe_acc" in epochs[-1] and "backbone_rankme" in epochs[-1]


def test_resume_is_exact(tmp_path):
    torch.set_num_threads(2)
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    Trainer(tiny_cfg(ref_dir, "tico", "train.epochs=3", "eval.final=false")).fit()
    # stop mid-epoch (step 11 of 24, epoch 1 of 3), then resume to the end
    s1 = Trainer(tiny_cfg(cut_dir, "tico", "train.epochs=3", "eval.final=false", "train.max_steps=11")).fit()
    assert s1["global_step"] == 11 and not s1["finished"]
    s2 = Trainer(tiny_cfg(cut_dir, "tico", "train.epochs=3", "eval.final=false"), resume=True).fit()
    assert s2["finished"] and s2["global_step"] == 24
    assert _losses(ref_dir / "run") == _losses(cut_dir / "run")

    def epoch_losses(d):
        return [
            (r["epoch"], r["loss"], r.get("knn_acc"))
            for r in map(json.loads, (d / "run" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "epoch"
        ]

    assert epoch_losses(ref_dir) == epoch_losses(cut_dir) and len(epoch_losses(ref_dir)) == 3
    a = load_checkpoint_file(ref_dir / "run" / "last.pt")
    b = load_checkpoint_file(cut_dir / "run" / "last.pt")
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k
    for k, v in a["probe"].items():
        assert torch.equal(v, b["probe"][k]), k


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "vicreg", "train.epochs=2", "eval.final=false")
    tr = Trainer(cfg)
    orig = tr.method.compute_loss
    calls = {"n": 0}

    def bad(z):
        calls["n"] += 1
        loss, terms = orig(z)
        return (loss * float("nan") if calls["n"] > 9 else loss), terms

    tr.method.compute_loss = bad
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        tr.fit()
    ck = load_checkpoint_file(tmp_path / "run" / "last.pt")  # written after epoch 0, still loadable
    assert ck["global_step"] == 8 and ck["epoch"] == 1


def test_cli_main_config_error_exit_code(tmp_path, capsys):
    assert main(["--set", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_corrupt_checkpoint_clear_error(tmp_path):
    p = tmp_path / "last.pt"
    p.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        load_checkpoint_file(p)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_checkpoint_file(tmp_path / "nope.pt")


def test_eval_checkpoint_cli(tmp_path, capsys):
    from sslext.app.cli import eval_main

    train(tiny_cfg(tmp_path, "vicreg", "train.epochs=1", "eval.final=false"))
    ck = tmp_path / "run" / "last.pt"
    out = tmp_path / "ev.json"
    assert eval_main(["--checkpoint", str(ck), "--output", str(out), "--set", "eval.offline_epochs=2"]) == 0
    res = json.loads(out.read_text())
    assert {"linear_acc", "linear_acc_10pct", "knn_acc", "backbone_rankme"} <= set(res)
    assert eval_main(["--checkpoint", str(tmp_path / "nope.pt")]) == 1
    assert "nope.pt" in capsys.readouterr().err


def test_python_m_sslext_train_main(tmp_path, capsys):
    args = []
    for o in [
        "method.projector=[32,32]",
        f"train.out_dir={tmp_path}",
        "name=cli",
        "train.epochs=1",
        "eval.final=false",
        *TINY,
    ]:
        args += ["--set", o]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["finished"] and (tmp_path / "cli" / "report.md").exists()
    assert main(args + ["--resume"]) == 0  # resuming a finished run is a no-op, not an error
