"""Self-supervised pretraining loop.

``python -m sslext.train --config configs/vicreg_resnet18_cifar10.yaml [--set k=v ...] [--resume]``

Writes into ``train.out_dir/<name>/``: ``config.yaml``, ``metrics.jsonl``
(every ``log_every`` steps and every epoch), ``metrics.csv`` (per epoch),
``last.pt`` (atomically, every ``checkpoint_every`` epochs and at the end),
``final_eval.json`` and ``report.md`` + PNG plots.

Resuming restores the model and loss buffers, optimizer, schedule, online
probe, all RNG streams (augmentation generator, torch) and the position in
the data order, so a resumed CPU run reproduces the uninterrupted one
bit-for-bit.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ConfigError, dump_config, load_config
from .data import DATASET_STATS, TwoViewAugment, atomic_save, build_dataset
from .distributed import get_world_size, init_distributed, is_main_process
from .evaluate import collapse_diagnostics, evaluate_backbone, extract_features, knn_accuracy
from .methods import build_method
from .models import build_backbone
from .optim import WarmupCosine, build_optimizer

__all__ = ["train", "Trainer", "NonFiniteLossError", "build_everything", "load_checkpoint_file", "resolve_device",
           "main"]

CHECKPOINT_VERSION = 1


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/Inf; the last checkpoint on disk is untouched."""


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(spec)


def load_checkpoint_file(path: str | Path) -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` with clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"checkpoint: {path} cannot be loaded ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise RuntimeError(f"checkpoint: {path} is not an sslext training checkpoint (version {CHECKPOINT_VERSION})")
    return ckpt


def _stats(cfg: Dict[str, Any]):
    d = cfg["data"]
    mean, std = DATASET_STATS.get(d["dataset"], DATASET_STATS["imagenet"])
    return tuple(d["mean"] or mean), tuple(d["std"] or std)


def build_everything(cfg: Dict[str, Any], device: torch.device, need_train_labels: bool = False) -> Dict[str, Any]:
    """Datasets, method and augmentation described by ``cfg`` (no optimizer)."""
    d = cfg["data"]
    kw = dict(root=d["root"], download=d["download"], image_size=d["image_size"], cache_dir=d["cache_dir"],
              seed=cfg["seed"])
    train_ds = build_dataset(d["dataset"], "train", limit=d["train_limit"], **kw)
    try:
        test_ds = build_dataset(d["dataset"], "test", limit=d["test_limit"], **kw)
    except Exception:
        if need_train_labels:
            raise
        test_ds = None  # unlabeled pretraining folders have no test split; evaluation is skipped
    if test_ds is not None and test_ds.labels is None:
        test_ds = None
    if need_train_labels and (train_ds.labels is None or test_ds is None):
        raise ValueError(f"data.dataset: evaluation needs labelled train and test splits for {d['dataset']!r}")
    torch.manual_seed(cfg["seed"])  # network init
    m = cfg["model"]
    backbone = build_backbone(m["backbone"], m["cifar_stem"], m["width"])
    mkw = {k: v for k, v in cfg["method"].items() if k != "name"}
    method = build_method(cfg["method"]["name"], backbone, **mkw).to(device)
    mean, std = _stats(cfg)
    a = cfg["augment"]
    nv = method.num_views
    if nv not in (1, 2):
        raise ValueError(f"method.name: {cfg['method']['name']!r} declares num_views={nv}; the trainer supports 1 or 2")
    # Slicing keeps two-view methods' augmentation RNG stream unchanged.
    augment = TwoViewAugment([a["view1"], a["view2"]][:nv], mean, std, seed=cfg["seed"])
    crop = a["view1"]["crop_size"]
    if nv == 2 and a["view2"]["crop_size"] != crop:
        raise ConfigError("augment.view2.crop_size: both views must use the same crop_size "
                          f"({crop} vs {a['view2']['crop_size']})")
    return dict(train_ds=train_ds, test_ds=test_ds, method=method, augment=augment, mean=mean, std=std,
                crop_size=crop)


class Trainer:
    """Owns every piece of training state; ``fit()`` runs (or resumes) a config."""

    def __init__(self, cfg: Dict[str, Any], resume: bool = False) -> None:
        self.cfg = cfg
        t = cfg["train"]
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        if init_distributed() and get_world_size() > 1:
            # Without DDP wrapping and data sharding every rank would train its
            # own copy on the same batches; refuse rather than waste the GPUs.
            raise NotImplementedError("multi-process (torchrun) training is not implemented yet: the loop has "
                                      "rank-0-only logging/checkpointing but no DDP wrapping or data sharding")
        self.main = is_main_process()
        self.device = resolve_device(t["device"])
        self.run_dir = Path(t["out_dir"]) / cfg["name"]
        self.ckpt_path = self.run_dir / "last.pt"
        parts = build_everything(cfg, self.device)
        self.__dict__.update(parts)
        o = cfg["optim"]
        self.batch_size = o["batch_size"]
        n = len(self.train_ds)
        if n < self.batch_size:
            raise ConfigError(f"optim.batch_size: {self.batch_size} is larger than the training set ({n} images)")
        self.steps_per_epoch = n // self.batch_size  # drop_last: full batches keep BN/loss statistics stable
        self.total_steps = t["epochs"] * self.steps_per_epoch
        self.optimizer = build_optimizer(o["name"], self.method, o["lr"], o["weight_decay"], o["momentum"], o["eta"],
                                         o["clip_lr"], o["exclude_bias_norm"])
        self.scheduler = WarmupCosine(self.optimizer, int(round(o["warmup_epochs"] * self.steps_per_epoch)),
                                      self.total_steps, o["warmup_start_factor"], o["final_lr_factor"])
        self.use_probe = cfg["eval"]["online_probe"] and self.train_ds.labels is not None
        nc = max(self.train_ds.num_classes, 1)
        self.probe = nn.Linear(self.method.feat_dim, nc).to(self.device)
        self.probe_opt = torch.optim.SGD(self.probe.parameters(), lr=cfg["eval"]["probe_lr"], momentum=0.9)
        self.amp = t["amp"] and self.device.type == "cuda"
        if t["channels_last"] and self.device.type == "cuda":
            self.method.to(memory_format=torch.channels_last)
        self.train_images = self.train_ds.images.pin_memory() if self.device.type == "cuda" else self.train_ds.images
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self._reset_acc()
        if resume:
            self._load(self.ckpt_path)
        elif self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for f in ("metrics.jsonl", "metrics.csv"):
                (self.run_dir / f).unlink(missing_ok=True)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))

    # ------------------------------------------------------------------ state
    def _reset_acc(self) -> None:
        # Running sums of the current epoch; checkpointed so a mid-epoch resume
        # reports the same epoch means as an uninterrupted run.
        self.acc: Dict[str, Any] = {"loss": 0.0, "n": 0, "probe_correct": 0, "terms": {}, "seconds": 0.0}

    def state_dict(self) -> Dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "probe": self.probe.state_dict(),
            "probe_opt": self.probe_opt.state_dict(),
            "augment": self.augment.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "epoch_acc": self.acc,
        }

    def save(self) -> None:
        if self.main:
            atomic_save(self.state_dict(), self.ckpt_path)

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint_file(path)
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.probe.load_state_dict(ckpt["probe"])
        self.probe_opt.load_state_dict(ckpt["probe_opt"])
        self.augment.load_state_dict(ckpt["augment"])
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.acc = ckpt["epoch_acc"]
        # Drop metric records written after this checkpoint (run died between
        # logging and checkpointing) so the resumed log has no duplicates.
        mpath = self.run_dir / "metrics.jsonl"
        if mpath.exists() and self.main:
            keep = []
            for line in mpath.read_text().splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if r.get("step", 0) <= self.global_step:
                    keep.append(line)
            mpath.write_text("".join(k + "\n" for k in keep))

    # ------------------------------------------------------------------ logging
    def _log(self, rec: Dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def _write_csv(self) -> None:
        if not self.main:
            return
        recs = [json.loads(l) for l in (self.run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
        recs = [r for r in recs if r.get("kind") == "epoch"]
        if not recs:
            return
        keys = sorted({k for r in recs for k in r})
        tmp = self.run_dir / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(recs)
        os.replace(tmp, self.run_dir / "metrics.csv")

    # ------------------------------------------------------------------ epoch eval
    @torch.no_grad()
    def _epoch_eval(self) -> Dict[str, float]:
        ev = self.cfg["eval"]
        out: Dict[str, float] = {}
        g = torch.Generator().manual_seed(self.cfg["seed"] + 7)
        ntr = len(self.train_ds)
        pick = torch.randperm(ntr, generator=g)[: min(ntr, ev["knn_train_limit"] or ntr)]
        feats, z = extract_features(self.method.backbone, self.train_ds.images[pick], ev["batch_size"], self.device,
                                    self.crop_size, self.mean, self.std, getattr(self.method, "projector", None))
        nd = min(ev["diag_samples"], feats.shape[0])
        out.update(collapse_diagnostics(feats[:nd], "backbone_"))
        if z is not None:  # pretext methods have no projector
            out.update(collapse_diagnostics(z[:nd], "projector_"))
        if self.test_ds is not None and self.train_ds.labels is not None:
            tf, _ = extract_features(self.method.backbone, self.test_ds.images, ev["batch_size"], self.device,
                                     self.crop_size, self.mean, self.std)
            nc = max(self.train_ds.num_classes, self.test_ds.num_classes)
            out["knn_acc"] = knn_accuracy(feats, self.train_ds.labels[pick], tf, self.test_ds.labels,
                                          ev["knn_k"], ev["knn_t"], nc)
            if self.use_probe:
                pred = self.probe(tf.to(self.device)).argmax(1).cpu()
                out["online_probe_acc"] = float((pred == self.test_ds.labels).float().mean() * 100)
        return out

    # ------------------------------------------------------------------ main loop
    def fit(self) -> Dict[str, Any]:
        """Train until ``train.epochs`` (or ``train.max_steps``); return a summary dict."""
        cfg, t = self.cfg, self.cfg["train"]
        B = self.batch_size
        labels = self.train_ds.labels
        pbar = None
        if self.main and t["progress"]:
            from tqdm import tqdm
            pbar = tqdm(total=self.total_steps, initial=self.global_step, desc=cfg["name"], dynamic_ncols=True)
        stopped_early = False
        t_start = time.time()
        while self.epoch < t["epochs"]:
            # The data order is a pure function of (seed, epoch), so resuming
            # mid-epoch only needs the step index, not a saved permutation.
            perm = torch.randperm(len(self.train_ds), generator=torch.Generator().manual_seed(
                cfg["seed"] * 1_000_003 + self.epoch))
            acc = self.acc
            t_epoch = time.time()
            while self.step_in_epoch < self.steps_per_epoch:
                idx = perm[self.step_in_epoch * B:(self.step_in_epoch + 1) * B]
                x = self.train_images[idx].to(self.device, non_blocking=True)
                views = self.augment(x)
                if self.device.type == "cuda" and t["channels_last"]:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    loss, terms = self.method.training_step(views)
                lval = float(loss.detach())
                if not math.isfinite(lval):
                    if pbar:
                        pbar.close()
                    raise NonFiniteLossError(
                        f"non-finite loss ({lval}) at epoch {self.epoch} step {self.global_step}; terms: "
                        f"{ {k: float(v) for k, v in terms.items()} }. Training stopped; the last good checkpoint "
                        f"({self.ckpt_path if self.ckpt_path.exists() else 'none written yet'}) is intact. "
                        "Try a lower optim.lr or more warmup.")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.method.after_optimizer_step(self.global_step, self.total_steps)
                probe_loss = None
                if self.use_probe:
                    y = labels[idx].to(self.device, non_blocking=True)
                    logits = self.probe(self.method.last_outputs["feats"].float())
                    probe_loss = F.cross_entropy(logits, y)
                    self.probe_opt.zero_grad(set_to_none=True)
                    probe_loss.backward()
                    self.probe_opt.step()
                    acc["probe_correct"] += int((logits.argmax(1) == y).sum())
                self.step_in_epoch += 1
                self.global_step += 1
                acc["loss"] += lval
                acc["n"] += 1
                for k, v in terms.items():
                    acc["terms"][k] = acc["terms"].get(k, 0.0) + float(v)
                if self.global_step % t["log_every"] == 0 or self.step_in_epoch == self.steps_per_epoch:
                    rec = {"kind": "step", "step": self.global_step, "epoch": self.epoch, "loss": lval,
                           "lr": self.scheduler.get_last_lr()[0], **{k: float(v) for k, v in terms.items()}}
                    if probe_loss is not None:
                        rec["probe_loss"] = float(probe_loss.detach())
                    self._log(rec)
                if pbar:
                    pbar.update(1)
                    pbar.set_postfix(epoch=self.epoch, loss=f"{lval:.4g}")
                if t["max_steps"] and self.global_step >= t["max_steps"]:
                    stopped_early = True
                    break
            acc["seconds"] += time.time() - t_epoch
            if stopped_early and self.step_in_epoch < self.steps_per_epoch:
                self.save()
                break
            ep_n = acc["n"]
            # epoch finished
            rec: Dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.global_step,
                                   "loss": acc["loss"] / max(ep_n, 1),
                                   **{k: v / max(ep_n, 1) for k, v in acc["terms"].items()},
                                   "lr": self.scheduler.get_last_lr()[0],
                                   "train_seconds": acc["seconds"],
                                   "images_per_second": ep_n * B / max(acc["seconds"], 1e-9)}
            if self.use_probe and ep_n:
                rec["online_probe_train_acc"] = acc["probe_correct"] / (ep_n * B) * 100
            if (self.epoch + 1) % cfg["eval"]["every"] == 0 or self.epoch + 1 == t["epochs"]:
                rec.update(self._epoch_eval())
            self._log(rec)
            self._write_csv()
            if pbar:
                pbar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in rec.items() if k in ("epoch", "loss", "online_probe_acc", "knn_acc",
                                                                     "backbone_rankme", "projector_rankme")))
            self.epoch += 1
            self.step_in_epoch = 0
            self._reset_acc()
            if self.epoch % t["checkpoint_every"] == 0 or self.epoch == t["epochs"] or stopped_early:
                self.save()
            if stopped_early:
                break
        if pbar:
            pbar.close()
        summary: Dict[str, Any] = {"run_dir": str(self.run_dir), "global_step": self.global_step,
                                   "epoch": self.epoch, "train_seconds": time.time() - t_start,
                                   "finished": self.epoch >= t["epochs"]}
        if summary["finished"] and cfg["eval"]["final"] and self.test_ds is not None \
                and self.train_ds.labels is not None:
            res = evaluate_backbone(self.method.backbone, self.train_ds, self.test_ds, device=self.device,
                                    crop_size=self.crop_size, mean=self.mean, std=self.std,
                                    projector=getattr(self.method, "projector", None),
                                    batch_size=cfg["eval"]["batch_size"],
                                    probe_epochs=cfg["eval"]["offline_epochs"], probe_lr=cfg["eval"]["offline_lr"],
                                    label_fraction=cfg["eval"]["label_fraction"], knn_k=cfg["eval"]["knn_k"],
                                    knn_t=cfg["eval"]["knn_t"], seed=cfg["seed"], progress=t["progress"])
            summary["final_eval"] = res
            if self.main:
                (self.run_dir / "final_eval.json").write_text(json.dumps(res, indent=2))
        if self.main and summary["finished"]:
            from .report import write_report
            summary["report"] = str(write_report(self.run_dir))
        return summary


def train(cfg: Dict[str, Any], resume: bool = False) -> Dict[str, Any]:
    """Run (or resume) pretraining for a validated config dict."""
    return Trainer(cfg, resume=resume).fit()


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslext-train", description="Self-supervised pretraining with sslext losses.")
    p.add_argument("--config", "-c", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.1 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/<name>/last.pt")
    p.add_argument("--download", action="store_true", help="download the dataset if missing (CIFAR)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        overrides = list(args.overrides) + (["data.download=true"] if args.download else [])
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"sslext-train: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg))
        return 0
    try:
        summary = train(cfg, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"sslext-train: {e}", file=sys.stderr)
        return 3
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"sslext-train: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
