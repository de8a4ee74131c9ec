"""The emulator's checks fire: kernels written to be wrong (csrc/emu/selftest.cpp),
each reported by the right check with kernel, block and thread."""

import re
from pathlib import Path

import pytest
import torch

EMU = torch.ops.sslext_emu
ROOT = Path(__file__).resolve().parents[2]

WRONG = {
    "missing_barrier": ("racecheck", "write-read hazard"),
    "shared_race": ("racecheck", "write-write hazard"),
    "read_write_race": ("racecheck", "read-write hazard"),
    "oob_write": ("memcheck", "invalid global write"),
    "oob_read": ("memcheck", "invalid global read"),
    "divergent_barrier": ("synccheck", "exited while other threads of its block wait"),
    "two_barriers": ("synccheck", "divergent __syncthreads"),
    "shuffle_past_block": ("synccheck", "past the last thread of the block"),
    "shuffle_xor_past_warp": ("synccheck", "reaches past the warp"),
    "shuffle_exited_lane": ("synccheck", "which has exited"),
    "block_too_large": ("launch check", "1025 threads", "plain"),
    "past_launch_bounds": ("launch check", "exceeds __launch_bounds__(128)", "bounded"),
    "grid_y_too_large": ("launch check", "exceeds 65535", "plain"),
    "zero_grid": ("launch check", "zero-sized grid", "plain"),
    "big_smem": ("launch check", "48 KiB"),
}


@pytest.mark.parametrize("name", sorted(WRONG))
def test_wrong_kernel_is_reported(name):
    check, what, *kernel = WRONG[name]
    out = EMU.selftest(name)
    assert out.startswith(f"ERROR sslext emu {check}: kernel {kernel[0] if kernel else name}_kernel "), out
    assert what in out, out
    if check != "launch check":
        assert re.search(r"block \(\d+,\d+,\d+\) thread \(\d+,\d+,\d+\)", out), out


@pytest.mark.parametrize("name", ["with_barrier", "within_launch_bounds"])
def test_correct_twin_passes(name):
    assert EMU.selftest(name) == "OK "


def test_checks_recover_after_a_failed_launch():
    assert EMU.selftest("oob_write").startswith("ERROR")
    assert EMU.selftest("shared_race").startswith("ERROR")
    assert EMU.selftest("oob_read").startswith("ERROR sslext emu memcheck")


@pytest.mark.parametrize("name", ["order_dependent", "order_dependent_sum"])
def test_order_dependent_result_changes_with_the_block_order(name):
    seed = EMU.seed()
    try:
        values = set()
        for s in range(seed, seed + 4):
            EMU.set_seed(s)
            values.add(EMU.selftest(name))
    finally:
        EMU.set_seed(seed)
    assert len(values) > 1, values


def _shfl_expected():
    lanes = range(32)
    v = [100 + lane for lane in lanes]

    def down(lane, d, w):
        return v[lane] if (lane % w) + d >= w else v[lane + d]

    def up(lane, d, w):
        return v[lane] if (lane % w) < d else v[lane - d]

    def xor(lane, m, w):
        s = lane ^ m
        return v[lane] if (s // w) > (lane // w) else v[s]

    def idx(lane, s, w):
        return v[(lane // w) * w + s % w]

    out = [down(lane, 5, 32) for lane in lanes] + [down(lane, 3, 8) for lane in lanes]
    out += [up(lane, 2, 32) for lane in lanes] + [xor(lane, 6, 16) for lane in lanes]
    out += [idx(lane, 37, 32) for lane in lanes] + [idx(lane, 9, 4) for lane in lanes]
    return out


def test_shuffle_semantics():
    """down/up/xor/idx, with and without width, as the CUDA programming guide defines them."""
    out = EMU.selftest("shuffle_semantics")
    assert out.startswith("OK "), out
    got = [int(x) for x in out[3:].rstrip(",").split(",")]
    assert got == _shfl_expected()


def test_two_dimensional_grid_and_block():
    assert EMU.selftest("grid_2d") == "OK " + "1" * 70


def test_launch_bounds_registered_for_every_kernel():
    """Each __global__ of csrc/cuda/ has its __launch_bounds__ known to the launch check."""
    registered = dict(line.split("=") for line in EMU.launch_bounds().split())
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        for name in re.findall(r"__global__\s+__launch_bounds__\(\w+\)\s+void\s+(\w+)", cu.read_text()):
            assert int(registered.get(name, 0)) > 0, (cu.name, name)
