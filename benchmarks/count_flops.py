"""FLOPs of one training step of a config, counted by torch.utils.flop_counter (any CPU, no dataset).

    python benchmarks/count_flops.py --config configs/mocov2_resnet18_imagenette.yaml [--batch 8]

Builds the config's method, runs one forward + backward on ``--batch`` random
images at the config's crop size and counts the FLOPs of every matmul and
convolution (what FlopCounterMode counts: the other ops are a small fraction
of a ResNet step). Every counted op is linear in the batch (convolutions, the
head, the query-queue logits), so the count is scaled to ``optim.batch_size``
and to a whole run (steps per epoch from ``--train-images``). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslext.app.config import load_config  # noqa: E402
from sslext.app.methods import build_method  # noqa: E402
from sslext.models import build_backbone  # noqa: E402


def count_step(cfg, batch: int) -> float:
    m = cfg["model"]
    torch.manual_seed(0)
    backbone = build_backbone(m["backbone"], m["cifar_stem"], m["width"])
    method = build_method(cfg["method"]["name"], backbone, **{k: v for k, v in cfg["method"].items() if k != "name"})
    size = cfg["augment"]["view1"]["crop_size"]
    views = [torch.randn(batch, 3, size, size) for _ in range(method.num_views)]
    with FlopCounterMode(display=False) as fc:
        loss, _ = method(views)
        loss.backward()
    return float(fc.get_total_flops())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--batch", type=int, default=8, help="images counted (the count is scaled to optim.batch_size)")
    p.add_argument("--train-images", type=int, default=9469, help="training-set size (Imagenette: 9469)")
    p.add_argument(
        "--eval-images",
        type=int,
        default=9469 + 3925,
        help="images whose features the final evaluation extracts (train + val)",
    )
    args = p.parse_args()
    cfg = load_config(args.config)
    t0 = time.time()
    per_step_small = count_step(cfg, args.batch)
    B = cfg["optim"]["batch_size"]
    per_image = per_step_small / args.batch
    steps_per_epoch = args.train_images // B
    epochs = cfg["train"]["epochs"]
    train_flops = per_image * B * steps_per_epoch * epochs
    # Final evaluation: one backbone forward per image (a third of a forward+backward, roughly);
    # the linear probes and kNN on 512-d features are negligible next to it.
    m = cfg["model"]
    bb = build_backbone(m["backbone"], m["cifar_stem"], m["width"]).eval()
    size = cfg["augment"]["view1"]["crop_size"]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        bb(torch.randn(args.batch, 3, size, size))
    fwd_per_image = fc.get_total_flops() / args.batch
    eval_flops = fwd_per_image * args.eval_images
    # The per-epoch kNN evaluation (every eval.every epochs) extracts the same features.
    n_epoch_evals = sum(1 for e in range(epochs) if (e + 1) % cfg["eval"]["every"] == 0 or e + 1 == epochs)
    epoch_eval_flops = eval_flops * n_epoch_evals
    out = {
        "config": args.config,
        "crop_size": size,
        "counted_batch": args.batch,
        "flops_per_image_step": per_image,
        "flops_per_step": per_image * B,
        "batch_size": B,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "train_flops": train_flops,
        "final_eval_flops": eval_flops,
        "epoch_eval_flops": epoch_eval_flops,
        "epoch_evals": n_epoch_evals,
        "total_flops": train_flops + eval_flops + epoch_eval_flops,
        "torch": torch.__version__,
        "count_seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
