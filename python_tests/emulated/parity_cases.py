"""The CPU/CUDA parity matrix of the emulated suite, shared by the test and by
the subprocess that computes the CPU build's side of it.

Run as a script (``python parity_cases.py OUT``) it imports the real CPU
build (``SSLEXT_EMULATED`` unset) and saves every case's loss and gradients to
OUT: one process cannot load both builds, since both register ``sslext``.
"""

import sys

import torch
from cases import CASES
from test_losses import make_views

# test_cuda.py's shapes, plus D = 1, N = 2 with a non-multiple-of-32 D, and
# N > 16384 (the column kernels' split count reaches its cap of 128).
SHAPES = [(2, 8), (64, 256), (256, 64), (100, 100), (37, 1030), (1030, 37), (5, 1), (2, 45)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# float16 on the small shapes: the same kernels as bfloat16, another conversion.
HALF_SHAPES = [(2, 8), (64, 256), (100, 100)]
STRATEGIES = ["gram", "covariance"]
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def matrix():
    out = []
    for case in CASES:
        for strategy in STRATEGIES:
            for shape in SHAPES:
                for dtype in DTYPES:
                    out.append((case, strategy, shape, dtype))
            for shape in HALF_SHAPES:
                out.append((case, strategy, shape, torch.float16))
    return out


def case_id(case, strategy, shape, dtype):
    return f"{case.name}-{strategy}-{shape[0]}x{shape[1]}-{str(dtype).split('.')[-1]}"


def run(case, strategy, shape, dtype):
    """Loss, both gradients and the updated running covariance (stateful losses)."""
    import warnings

    z_a, z_b = make_views(*shape, dtype=dtype, seed=7)
    c = case.make_cov(shape[1])
    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gram with N >= D only warns
        loss, _ = case.run_ours(a, b, strategy, c)
    loss.backward()
    out = [loss.detach(), a.grad, b.grad]
    if c is not None:
        out.append(c)
    return out


def main(path):
    import sslext

    assert not sslext.build_info()["emulated_cuda"], "the CPU side must come from the real build"
    results = {case_id(*m): run(*m) for m in matrix()}
    torch.save(results, path)


if __name__ == "__main__":
    main(sys.argv[1])
