"""The trainer's evaluations: the per-epoch kNN / collapse / online-probe record and the final frozen-backbone one."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import torch

from ...evaluate import collapse_diagnostics, evaluate_backbone, extract_features, knn_accuracy
from .metrics import atomic_write_text

# ``tr`` below is the :class:`~.trainer.Trainer` (not imported: the trainer imports this module).

__all__ = ["epoch_eval", "final_eval"]


@torch.no_grad()
def epoch_eval(tr: Any) -> Dict[str, float]:
    """kNN accuracy, collapse diagnostics and the online probe's test accuracy of the model now."""
    ev = tr.cfg["eval"]
    out: Dict[str, float] = {}
    g = torch.Generator().manual_seed(tr.cfg["seed"] + 7)
    # eval_train_ds is train_ds unless eval.split=val holds images out (build._hold_out_val).
    bank = tr.eval_train_ds
    ntr = len(bank)
    pick = torch.randperm(ntr, generator=g)[: min(ntr, ev["knn_train_limit"] or ntr)]
    feats, z = extract_features(
        tr.method.backbone,
        bank.images[pick],
        ev["batch_size"],
        tr.device,
        tr.crop_size,
        tr.mean,
        tr.std,
        getattr(tr.method, "projector", None),
    )
    nd = min(ev["diag_samples"], feats.shape[0])
    out.update(collapse_diagnostics(feats[:nd], "backbone_"))
    if z is not None:  # pretext methods have no projector
        out.update(collapse_diagnostics(z[:nd], "projector_"))
    tr.metrics.log_spectra(tr.global_step, backbone=feats[:nd], projector=None if z is None else z[:nd])
    if tr.test_ds is not None and bank.labels is not None:
        tf, _ = extract_features(
            tr.method.backbone, tr.test_ds.images, ev["batch_size"], tr.device, tr.crop_size, tr.mean, tr.std
        )
        nc = max(bank.num_classes, tr.test_ds.num_classes)
        out["knn_acc"] = knn_accuracy(feats, bank.labels[pick], tf, tr.test_ds.labels, ev["knn_k"], ev["knn_t"], nc)
        if tr.use_probe:
            pred = tr.probe(tf.to(tr.device)).argmax(1).cpu()
            out["online_probe_acc"] = float((pred == tr.test_ds.labels).float().mean() * 100)
    return out


def eval_settings(cfg: Dict[str, Any], progress: Optional[bool] = None) -> Dict[str, Any]:
    """``evaluate_backbone``'s keyword arguments that a run's config sets (its ``eval``
    section and seed): every offline evaluation of a run (the final one, a checkpoint's,
    the demo's random-backbone baseline) measures with the same settings."""
    ev = cfg["eval"]
    return dict(
        batch_size=ev["batch_size"],
        probe_epochs=ev["offline_epochs"],
        probe_lr=ev["offline_lr"],
        label_fraction=ev["label_fraction"],
        knn_k=ev["knn_k"],
        knn_t=ev["knn_t"],
        seed=cfg["seed"],
        progress=cfg["train"]["progress"] if progress is None else progress,
    )


def final_eval(tr: Any) -> Dict[str, Any]:
    """Linear probe, kNN and collapse diagnostics of the frozen backbone (eval.final), written
    to final_eval.json and the metrics log; rank 0 alone calls it (its record is the one written)."""
    res = evaluate_backbone(
        tr.method.backbone,
        tr.eval_train_ds,
        tr.test_ds,
        device=tr.device,
        crop_size=tr.crop_size,
        mean=tr.mean,
        std=tr.std,
        projector=getattr(tr.method, "projector", None),
        **eval_settings(tr.cfg),
    )
    atomic_write_text(tr.run_dir / "final_eval.json", json.dumps(res, indent=2))
    tr.metrics.log_final(tr.global_step, res)
    return res
