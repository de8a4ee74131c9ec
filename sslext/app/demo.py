"""CPU demo: SSL pretraining on Fashion-MNIST (VICReg by default), then linear
probe and kNN of the SSL backbone versus the same architecture at random
initialisation.

``python -m sslext.app.demo`` (``make demo``) finds Fashion-MNIST in ``data.root``,
Debian's ``dataset-fashion-mnist`` or ``--data-dir`` (default ``data/``), and
otherwise downloads it there with torchvision's checksummed downloader
(``--no-download`` forbids that); no root rights needed. ``--method simclr`` (any registered
method) trains that method instead, with demo-sized heads from
``DEMO_METHODS``; ``--set key=value`` overrides come last. Prints a table and
writes the run directory (metrics, checkpoint, report.md with plots) under
``runs/``; running the demo again moves the previous demo run aside
(``runs/<name>.old-<time>``) rather than refusing or deleting it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..data import DatasetError, load_fashion_mnist
from ..evaluate import evaluate_backbone
from ..models import build_backbone
from .config import ConfigError, apply_override, load_config, shipped_configs_dir
from .methods import METHODS
from .report import read_metrics
from .training import Trainer
from .training.evaluation import eval_settings
from .training.precision import trainer_precision

__all__ = ["main", "DEMO_CONFIG", "DEMO_METHODS", "method_overrides"]

EXIT_INTERRUPTED = 4  # as sslext-train: stopped by SIGTERM/SIGINT after writing a checkpoint

DEMO_CONFIG = shipped_configs_dir() / "demo_fashion_mnist.yaml"

# Overrides that turn the demo config (VICReg, ResNet-10 with 128-d features)
# into a demo of another method: heads narrowed like the VICReg demo's 512-wide
# expander, everything else (data, augmentations, LARS lr 0.3, budget) shared so
# the rows are comparable, except where noted. A registered method missing here runs with its
# DEFAULTS (recipe-sized heads).
DEMO_METHODS: Dict[str, List[str]] = {
    "vicreg": [],
    "simclr": ["method.projector=[512,128]", "method.temperature=0.2"],
    "mocov2": [
        "method.projector=[512,128]",
        "method.queue_size=4096",
        "method.temperature=0.2",
        "method.momentum=0.99",
        "method.final_momentum=0.999",
    ],
    "byol": [
        "method.projector=[512,128]",
        "method.predictor_hidden=512",
        "method.momentum=0.99",
        "method.final_momentum=1.0",
    ],
    # SimSiam keeps its recipe's optimiser (SGD lr 0.5, solo-learn): with the
    # shared LARS 0.3 it did not beat random init in the 46-step budget
    # (benchmarks/results/cpu/methods_demo.md).
    "simsiam": [
        "method.projector=[512,512,512]",
        "method.predictor_hidden=128",
        "optim.name=sgd",
        "optim.lr=0.5",
        "optim.weight_decay=1.0e-5",
        "optim.exclude_bias_norm=false",
    ],
    # Pretext methods: the settings of their measured demo rows (methods_demo.md):
    # batch 128 without warmup; Jigsaw on a 2x2 grid (the 3x3 default's 7 px
    # tiles did not beat random init at 28 px); CPC with its recipe's AdamW.
    "rotnet": ["optim.batch_size=128", "optim.warmup_epochs=0"],
    "jigsaw": ["method.grid=2", "method.num_permutations=24", "optim.batch_size=128", "optim.warmup_epochs=0"],
    "cpc": [
        "optim.name=adamw",
        "optim.lr=0.001",
        "optim.weight_decay=0.0001",
        "optim.batch_size=128",
        "optim.warmup_epochs=0",
    ],
}


def method_overrides(method: str) -> List[str]:
    """``--set`` overrides that make the demo config train ``method``."""
    if method == "vicreg":
        return []
    return [f"method.name={method}", f"name=demo_fashion_mnist_{method}", *DEMO_METHODS.get(method, [])]


def find_fashion_mnist(root: Optional[str], data_dir: str, download: bool = True) -> Optional[str]:
    """The ``data.root`` the demo reads Fashion-MNIST from.

    ``root`` when the config sets one (never replaced: a wrong folder is an error);
    otherwise Debian's package (``None``), then ``data_dir``, then a download
    into ``data_dir`` through torchvision (md5-checked). Raises ``DatasetError``
    naming every way to get the data when none works."""
    if root:
        load_fashion_mnist(root, "test")  # its error names the folder and what is missing
        return root
    for cand in (None, data_dir):
        try:
            load_fashion_mnist(cand, "test")
            return cand
        except DatasetError:
            pass
    why = "--no-download was given"
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(data_dir, train=train, download=True)
            load_fashion_mnist(data_dir, "test")
            return data_dir
        except Exception as e:  # no network, a mirror down, a checksum mismatch
            why = f"the download into {data_dir!r} failed: {type(e).__name__}: {e}"
    raise DatasetError(
        f"Fashion-MNIST is not here and {why}. Either\n"
        "  - let the demo download it (needs the network; about 30 MB into --data-dir), or\n"
        "  - install Debian's package (needs root): apt-get update && apt-get install -y dataset-fashion-mnist, or\n"
        "  - pass --set data.root=DIR, a folder with the four IDX files (train-/t10k-images/labels)."
    )


def _default_precision(cfg: Dict, runs: List) -> Dict:
    """What the config's own ``train.amp`` (``auto`` unless overridden) trains in on this
    machine, beside what the two compared runs measured: the comparison's conclusion
    is about the default, not about either fixed setting.

    ``auto`` is resolved as a run would resolve it (its short measurement, or the
    answer cached for this CPU model and workload), on the float32 run's model with
    the config's layout."""
    trainer, amp = runs[0][1], cfg["train"]["amp"]
    prec = trainer_precision(cfg, trainer.device, trainer.method, trainer.local_batch, trainer.crop_size, trainer.rank)
    (_, _, fp32, _, fp32_ips), (_, _, bf16, _, bf16_ips) = runs
    ratio = bf16_ips / max(fp32_ips, 1e-12)
    delta = {k: bf16["final_eval"][k] - fp32["final_eval"][k] for k in ("linear_acc", "knn_acc")}
    verdict = (
        f"train.amp={amp}{' (the default)' if amp == 'auto' else ''} with "
        f"channels_last={str(cfg['train']['channels_last']).lower()} trains in {prec.name} on this machine ({prec.reason}). In the two runs above bf16 trained at {ratio:.2f}x "
        f"float32's images/s and moved linear probe / kNN by {delta['linear_acc']:+.2f} / {delta['knn_acc']:+.2f} points."
    )
    return {
        "amp": amp,
        "precision": prec.name,
        "reason": prec.reason,
        "rates": prec.rates,
        "bf16_speedup_in_runs": ratio,
        "bf16_minus_float32": delta,
        "verdict": verdict,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sslext.app.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEMO_CONFIG), help="demo config (default: %(default)s)")
    p.add_argument(
        "--method",
        default=None,
        help="train this registered method with demo-sized heads (default: the config's, VICReg)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--data-dir",
        default="data",
        help="where Fashion-MNIST is looked for and downloaded to when data.root is not set "
        "and Debian's package is not installed (default: %(default)s)",
    )
    p.add_argument("--no-download", action="store_true", help="never download Fashion-MNIST")
    p.add_argument(
        "--compare-precision",
        action="store_true",
        help="train twice with the same seed and memory layout (channels_last), float32 and then "
        "bf16 autocast, print both and what the config's train.amp (default auto) picks here (make demo does)",
    )
    args = p.parse_args(argv)

    if args.method is not None and args.method not in METHODS:
        print(f"demo: --method: expected one of {sorted(METHODS)}, got {args.method!r}", file=sys.stderr)
        return 2
    pre = method_overrides(args.method) if args.method else []
    try:
        cfg = load_config(args.config, pre + list(args.overrides))
    except ConfigError as e:
        print(f"demo: config error: {e}", file=sys.stderr)
        return 2
    try:
        root = find_fashion_mnist(cfg["data"]["root"], args.data_dir, download=not args.no_download)
    except DatasetError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    apply_override(cfg, f"data.root={root}" if root else "data.root=null")
    if cfg["train"]["threads"]:
        torch.set_num_threads(cfg["train"]["threads"])

    t0 = time.time()
    if args.compare_precision:
        variants = [
            # Only the precision differs: both keep channels_last, the default layout.
            ("float32 + channels_last", ["train.amp=false", "train.channels_last=true"], "_fp32"),
            ("bf16 + channels_last", ["train.amp=bf16", "train.channels_last=true"], "_bf16"),
        ]
    else:
        variants = [("SSL", [], "")]
    runs = []
    for label, extra, suffix in variants:
        vcfg = copy.deepcopy(cfg)
        for item in extra + ([f"name={cfg['name']}{suffix}"] if suffix else []):
            apply_override(vcfg, item)
        t_v = time.time()
        trainer = Trainer(vcfg, overwrite=True)  # a demo is meant to be rerun; the old run is kept aside
        try:
            summary = trainer.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: fit stops without a new checkpoint
            print("demo: interrupted", file=sys.stderr)
            return 130
        if summary.get("interrupted"):
            # Ctrl-C means stop: training the next variant and evaluating a
            # half-trained backbone would print a table that is not the demo's.
            print(
                f"demo: stopped by {summary['interrupted']} at step {summary['global_step']} of the "
                f"{label} run; its checkpoint is in {summary['run_dir']}; run the demo again to start over",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        epochs = [r for r in read_metrics(summary["run_dir"]) if r.get("kind") == "epoch"]
        ips = sum(r["images_per_second"] for r in epochs) / max(len(epochs), 1)
        runs.append((label, trainer, summary, time.time() - t_v, ips))
    t_train = time.time() - t0
    trainer = runs[0][1]

    # Same architecture, same seed, no training: the baseline SSL must beat.
    torch.manual_seed(cfg["seed"])
    m = cfg["model"]
    rand_backbone = build_backbone(m["backbone"], m["cifar_stem"], m["width"])
    ev = cfg["eval"]
    t1 = time.time()
    rnd = evaluate_backbone(
        rand_backbone,
        trainer.train_ds,
        trainer.test_ds,
        device=trainer.device,
        crop_size=trainer.crop_size,
        mean=trainer.mean,
        std=trainer.std,
        **eval_settings(cfg),
    )
    total = time.time() - t0
    pct = int(round(ev["label_fraction"] * 100))
    rows = [
        ("linear probe, 100% labels (%)", "linear_acc"),
        (f"linear probe, {pct}% labels (%)", f"linear_acc_{pct}pct"),
        (f"kNN k={ev['knn_k']} T={ev['knn_t']} (%)", "knn_acc"),
        ("backbone RankMe", "backbone_rankme"),
    ]
    w = max(8, *(len(r[0]) for r in runs))
    print()
    print(
        f"Fashion-MNIST test accuracy, {m['backbone']} (width {m['width']}) features, "
        f"{cfg['method']['name']} {cfg['train']['epochs']} epochs on {len(trainer.train_ds)} images"
    )
    print(f"| {'metric':<32} | " + " | ".join(f"{r[0]:>{w}}" for r in runs) + f" | {'random init':>11} |")
    print(f"|{'-' * 34}|" + "|".join("-" * (w + 2) for _ in runs) + f"|{'-' * 13}|")
    for label, key in rows:
        print(
            f"| {label:<32} | "
            + " | ".join(f"{r[2]['final_eval'][key]:>{w}.2f}" for r in runs)
            + f" | {rnd[key]:11.2f} |"
        )
    print(f"| {'training images/s':<32} | " + " | ".join(f"{r[4]:>{w}.0f}" for r in runs) + f" | {'-':>11} |")
    for label, tr, summary, secs, _ in runs:
        print(
            f"{label}: pretraining + SSL eval {secs:.0f} s (autocast {tr.precision.name if tr.precision.dtype else 'off'}), "
            f"run dir: {summary['run_dir']}"
            + (f" (previous run moved to {summary['moved_aside']})" if summary.get("moved_aside") else "")
        )
    print(f"random-init eval: {time.time() - t1:.0f} s, total {total:.0f} s")
    default = _default_precision(cfg, runs) if args.compare_precision else None
    if default:
        print(default["verdict"])
    result = {
        "random_init": rnd,
        "train_seconds": t_train,
        "total_seconds": total,
        "runs": {
            label: {
                "ssl": summary["final_eval"],
                "train_seconds": secs,
                "images_per_second": ips,
                "amp": tr.precision.dtype is not None,
                "precision": tr.precision.name,
                "run_dir": summary["run_dir"],
            }
            for label, tr, summary, secs, ips in runs
        },
    }
    if default:
        result["default_precision"] = default
    if not args.compare_precision:
        result["ssl"] = runs[0][2]["final_eval"]
    Path(runs[0][2]["run_dir"], "demo_result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
