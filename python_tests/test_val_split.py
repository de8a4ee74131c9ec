"""eval.split=val: tuning evaluates on held-out training images, never on test."""

from __future__ import annotations

import torch

from sslext.app.config import load_config
from sslext.app.training import build_everything, train
from sslext.app.training.build import IGNORE_LABEL, _hold_out_val

SMOKE = "configs/smoke_synthetic.yaml"


def _cfg(tmp_path, *extra):
    return load_config(SMOKE, [f"train.out_dir={tmp_path}", "train.device=cpu", *extra])


def test_val_split_is_stratified_disjoint_and_independent_of_the_run_seed(tmp_path):
    parts = build_everything(_cfg(tmp_path, "eval.split=val", "eval.val_fraction=0.25"), torch.device("cpu"))
    train_ds, ev_ds, val_ds = parts["train_ds"], parts["eval_train_ds"], parts["test_ds"]
    assert val_ds.name.endswith("-val")
    assert len(ev_ds) + len(val_ds) == len(train_ds)
    # Every held-out image is a training image, and none is also in the probe's bank.
    flat = train_ds.images.flatten(1)
    val_rows = {tuple(r.tolist()) for r in val_ds.images.flatten(1)}
    ev_rows = {tuple(r.tolist()) for r in ev_ds.images.flatten(1)}
    assert val_rows.isdisjoint(ev_rows) and val_rows <= {tuple(r.tolist()) for r in flat}
    # Stratified: a quarter of each class.
    for c in torch.unique(train_ds.labels):
        n = int((train_ds.labels == c).sum())
        assert int((val_ds.labels == c).sum()) == round(0.25 * n)
    # The online probe sees the held-out images' labels as ignored, the rest unchanged.
    ignored = parts["probe_labels"] == IGNORE_LABEL
    assert int(ignored.sum()) == len(val_ds)
    assert torch.equal(parts["probe_labels"][~ignored], train_ds.labels[~ignored])
    # The held-out images depend on eval.val_seed alone (the run's seed is not an input),
    # so every cell of a tuning sweep evaluates on the same images.
    ev = {"val_fraction": 0.25, "val_seed": 0}
    again = _hold_out_val(train_ds, ev)[1]
    assert torch.equal(again.images, val_ds.images)
    assert not torch.equal(_hold_out_val(train_ds, {**ev, "val_seed": 1})[1].labels, val_ds.labels) or not torch.equal(
        _hold_out_val(train_ds, {**ev, "val_seed": 1})[1].images, val_ds.images
    )


def test_default_split_is_test_and_unchanged(tmp_path):
    parts = build_everything(_cfg(tmp_path), torch.device("cpu"))
    assert parts["eval_train_ds"] is parts["train_ds"]
    assert parts["probe_labels"] is parts["train_ds"].labels
    assert parts["test_ds"] is not None and "val" not in parts["test_ds"].name


def test_training_with_val_split_evaluates_on_val(tmp_path):
    cfg = _cfg(tmp_path, "eval.split=val", "eval.val_fraction=0.25", "name=val_run")
    summary = train(cfg)
    assert summary["finished"]
    res = summary["final_eval"]
    assert 0 <= res["linear_acc"] <= 100 and 0 <= res["knn_acc"] <= 100


def test_bad_val_settings_are_named(tmp_path):
    import pytest

    from sslext.app.config import ConfigError

    for item, key in (
        ("eval.split=train", "eval.split"),
        ("eval.val_fraction=0", "eval.val_fraction"),
        ("eval.val_fraction=1.5", "eval.val_fraction"),
    ):
        with pytest.raises(ConfigError, match=key):
            _cfg(tmp_path, item)
    with pytest.raises(ConfigError, match="eval.val_fraction"):
        _cfg(tmp_path, "eval.split=val", "eval.val_fraction=1")
