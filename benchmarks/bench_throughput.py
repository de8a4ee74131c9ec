"""Training throughput: images/s of SSL pretraining, and the share of a step spent in the loss.

For each backbone (VICReg, batch 512 by default), in one run on one machine:
  ours          uint8 images in memory, two views augmented in a batch on the
                training device (sslext.data.TwoViewAugment), sslext loss
  torchvision   the conventional pipeline: PIL images, per-image
                torchvision.transforms (same recipe), DataLoader workers, sslext loss
  reference     our input pipeline with the plain-PyTorch reference loss
                (official formulation) instead of sslext's
and the loss alone (forward+backward on embeddings of the step's shape), with
sslext and with the reference, as a share of the step.

    python benchmarks/bench_throughput.py --device cuda --backbones resnet18,resnet50
    python benchmarks/bench_throughput.py --device cpu --backbones resnet18 --batch-size 64 --iters 3

Synthetic uint8 images (CIFAR-sized unless --image-size) unless --data names a
cifar-10-batches-py folder; throughput does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class ReferenceVICReg(nn.Module):
    """The official VICReg formulation as a drop-in loss module (last_terms like ours)."""

    def forward(self, z_a, z_b):
        from sslext import reference as R

        loss, terms = R.vicreg_reference(z_a, z_b)
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return loss


def load_images(args):
    if args.data:
        from sslext.data import build_dataset

        ds = build_dataset("cifar10", "train", root=args.data, limit=args.batch_size * (args.iters + 2))
        return ds.images
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.iters + 2)
    return torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g)


def build(args, backbone_name, device):
    from sslext.data import DATASET_STATS, TwoViewAugment, ViewAugment
    from sslext.methods import build_method
    from sslext.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, True, 64)
    method = build_method("vicreg", backbone, projector=[args.proj_dim] * 3).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    mean, std = DATASET_STATS["cifar10"]
    aug = TwoViewAugment([ViewAugment(crop_size=args.image_size), ViewAugment(crop_size=args.image_size, solarize_prob=0.2)],
                         mean, std, seed=0)
    return method, opt, aug, mean, std


def train_step(method, opt, views, device):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss, _ = method.training_step(views)
    loss.backward()
    opt.step()


def run_ours(method, opt, aug, images, args, device):
    bs = args.batch_size
    times = []
    for i in range(args.iters + 2):
        _sync(device)
        t0 = time.perf_counter()
        batch = images[i * bs:(i + 1) * bs].to(device, non_blocking=True)
        views = aug(batch)
        if device.type == "cuda":
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        train_step(method, opt, views, device)
        _sync(device)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    return bs / statistics.median(times)


def run_torchvision(method, opt, images, mean, std, args, device):
    """Per-image PIL transforms in DataLoader workers: the pipeline most SSL code uses."""
    from torchvision import transforms as T
    from torchvision.transforms import functional as TF

    size = args.image_size
    recipe = T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(0.2),
        T.RandomSolarize(128, p=0.1),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])

    class TwoViews(torch.utils.data.Dataset):
        def __len__(self):
            return images.shape[0]

        def __getitem__(self, i):
            img = TF.to_pil_image(images[i])
            return recipe(img), recipe(img)

    loader = torch.utils.data.DataLoader(
        TwoViews(), batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False)
    times = []
    it = iter(loader)
    for i in range(min(args.iters + 2, len(loader))):
        _sync(device)
        t0 = time.perf_counter()
        v1, v2 = next(it)
        views = [v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)]
        if device.type == "cuda":
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        train_step(method, opt, views, device)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return args.batch_size / statistics.median(times)


def time_loss(loss_fn, n, d, device, iters):
    z_a = torch.randn(n, d, device=device, requires_grad=True)
    z_b = torch.randn(n, d, device=device, requires_grad=True)
    times = []
    for i in range(iters + 2):
        _sync(device)
        t0 = time.perf_counter()
        loss_fn(z_a, z_b).backward()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbones", default="resnet18,resnet50")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--proj-dim", type=int, default=2048)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--data", default=None, help="folder with cifar-10-batches-py (default: synthetic images)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    device = torch.device(args.device)
    import sslext

    images = load_images(args)
    rows = []
    for name in args.backbones.split(","):
        method, opt, aug, mean, std = build(args, name, device)
        ours = run_ours(method, opt, aug, images, args, device)
        tv = run_torchvision(method, opt, images, mean, std, args, device)
        method.loss_fn = ReferenceVICReg()
        ref = run_ours(method, opt, aug, images, args, device)
        d = args.proj_dim
        t_ours = time_loss(sslext.VICRegLoss(), args.batch_size, d, device, args.iters)
        t_ref = time_loss(ReferenceVICReg(), args.batch_size, d, device, args.iters)
        row = dict(backbone=name, batch=args.batch_size, proj_dim=d,
                   images_per_s_ours=ours, images_per_s_torchvision=tv, images_per_s_reference_loss=ref,
                   loss_s_sslext=t_ours, loss_s_reference=t_ref,
                   loss_share_sslext=t_ours * ours / args.batch_size,
                   loss_share_reference=t_ref * ref / args.batch_size)
        rows.append(row)
        print(f"{name}: ours {ours:.0f} img/s | torchvision DataLoader {tv:.0f} img/s ({ours / tv:.2f}x) | "
              f"reference loss {ref:.0f} img/s | loss share of a step: sslext {row['loss_share_sslext']:.1%}, "
              f"reference {row['loss_share_reference']:.1%}", flush=True)
        del method, opt
    env = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
               torch=torch.__version__, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               autocast="bf16" if device.type == "cuda" else "off", workers=args.workers,
               images="cifar10" if args.data else "synthetic uint8")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
