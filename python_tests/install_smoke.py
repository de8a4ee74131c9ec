"""Smoke test of an installed sslext, run by ``make test-install`` in a fresh venv.

Run from outside the source tree with ``python -I`` (no cwd or script
directory on sys.path), so ``import sslext`` can only find the installed
package; the first check proves it. Not collected by pytest (no ``test_``
prefix): it tests an installation, not the source tree.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path


def main() -> int:
    import torch

    import sslext
    from sslext import reference as R

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    where = Path(sslext.__file__).resolve()
    if site not in where.parents:
        print(f"install smoke: sslext imported from {where}, not from this environment's {site}", file=sys.stderr)
        return 1
    info = sslext.build_info()
    print("install smoke: sslext", sslext.__version__, "from", where.parent, json.dumps(info))
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0], info

    # A loss through the compiled op, forward and backward, against the plain-PyTorch reference.
    g = torch.Generator().manual_seed(0)
    za = torch.randn(16, 24, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(16, 24, generator=g, dtype=torch.float64, requires_grad=True)
    loss = sslext.VICRegLoss()(za, zb)
    loss.backward()
    ra, rb = za.detach().clone().requires_grad_(), zb.detach().clone().requires_grad_()
    ref, _ = R.vicreg_reference(ra, rb)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(za.grad, ra.grad)
    torch.testing.assert_close(zb.grad, rb.grad)

    # Every subpackage made it into the wheel, and the commands start.
    import sslext.app.methods
    import sslext.app.shard
    import sslext.app.sweeps.run
    import sslext.app.training
    import sslext.data  # noqa: E401,F401
    import sslext.models
    from sslext.train import Trainer  # noqa: F401

    bindir = Path(sys.executable).parent
    for cmd in (
        [str(bindir / "sslext-train"), "--help"],
        [str(bindir / "sslext-eval"), "--help"],
        [str(bindir / "sslext-export"), "--help"],
        [str(bindir / "sslext-sweep"), "--help"],
        [str(bindir / "sslext-shard"), "--help"],
        [sys.executable, "-I", "-m", "sslext.train", "--help"],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
        assert r.returncode == 0 and "usage" in r.stdout, (cmd, r.returncode, r.stderr[-2000:])
    print(
        "install smoke: loss forward/backward matches the reference; sslext-train, sslext-eval, sslext-export, "
        "sslext-sweep, sslext-shard and "
        "python -m sslext.train start"
    )

    # The shipped configs travel inside the package: a recipe by name and the demo's
    # own config, from a folder that is not the source tree.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        r = subprocess.run(
            [
                str(bindir / "sslext-train"),
                "--config",
                "smoke_synthetic",
                "--set",
                "train.out_dir=runs",
                "--set",
                "eval.offline_epochs=1",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0 and (Path(tmp) / "runs" / "smoke_synthetic" / "last.pt").is_file(), (
            r.returncode,
            r.stderr[-2000:],
        )
        _write_fashion_mnist(Path(tmp) / "fmnist")
        r = subprocess.run(
            [
                sys.executable,
                "-I",
                "-m",
                "sslext.app.demo",
                "--no-download",
                "--set",
                "data.root=fmnist",
                "--set",
                "train.epochs=1",
                "--set",
                "optim.warmup_epochs=0",
                "--set",
                "data.train_limit=256",
                "--set",
                "eval.offline_epochs=1",
                "--set",
                "eval.knn_k=5",
                "--set",
                "train.out_dir=runs",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    print("install smoke: `sslext-train --config smoke_synthetic` and `python -m sslext.app.demo` run outside the tree")
    return 0


def _write_fashion_mnist(root: Path) -> None:
    """Four tiny gzipped IDX files in Fashion-MNIST's layout (random pixels)."""
    import gzip
    import struct

    import numpy as np

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("t10k", 64)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            arr = np.asarray(arr, dtype=np.uint8)
            head = struct.pack(">HBB", 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
            with gzip.open(root / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(head + arr.tobytes())


if __name__ == "__main__":
    raise SystemExit(main())
