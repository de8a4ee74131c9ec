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
    import sslext.data, sslext.methods, sslext.models, sslext.training  # noqa: E401,F401
    from sslext.train import Trainer  # noqa: F401
    bindir = Path(sys.executable).parent
    for cmd in ([str(bindir / "sslext-train"), "--help"], [str(bindir / "sslext-eval"), "--help"],
                [str(bindir / "sslext-export"), "--help"], [sys.executable, "-I", "-m", "sslext.train", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
        assert r.returncode == 0 and "usage" in r.stdout, (cmd, r.returncode, r.stderr[-2000:])
    print("install smoke: loss forward/backward matches the reference; sslext-train, sslext-eval, sslext-export and "
          "python -m sslext.train start")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
