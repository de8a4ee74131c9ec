"""The build's arch defaults agree everywhere, the wheel check expects what setup.py builds, and a
CUDA toolkit of another major version than torch's stops the build with both versions named.

(The wheel itself is checked by ``make wheel`` and ``make test-install``: they need a build.)
"""

import re
import runpy
from pathlib import Path

import pytest
from check_wheel_archs import default_archs, parse_arch_list

ROOT = Path(__file__).resolve().parent.parent


def test_parse_arch_list():
    assert parse_arch_list("8.0;9.0+PTX") == ({80, 90}, {90})
    assert parse_arch_list("7.5 8.6") == ({75, 86}, set())
    assert parse_arch_list("9.0a;10.0+PTX") == ({90, 100}, {100})
    with pytest.raises(ValueError, match="TORCH_CUDA_ARCH_LIST"):
        parse_arch_list("sm_90")


def test_default_archs_agree_and_embed_ptx_for_the_newest():
    found = {
        "setup.py": re.search(r'^DEFAULT_ARCHS = "([^"]+)"', (ROOT / "setup.py").read_text(), re.M),
        "CMakeLists.txt": re.search(
            r'set\(ENV\{TORCH_CUDA_ARCH_LIST\} "([^"]+)"\)', (ROOT / "CMakeLists.txt").read_text()
        ),
    }
    archs = {k: m.group(1) if m else None for k, m in found.items()}
    assert len(set(archs.values())) == 1 and None not in archs.values(), archs
    sass, ptx = parse_arch_list(archs["setup.py"])
    assert ptx == {max(sass)}, f"+PTX belongs on the newest arch: {archs['setup.py']}"


def test_makefile_leaves_the_archs_to_setup_py():
    """An exported default would override setup.py's detection of the visible GPU (a T4 got no kernel image)."""
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(r"^\s*(export\s+)?TORCH_CUDA_ARCH_LIST\s*(\?|:)?=", makefile, re.M)
    assert not re.search(r"^\s*export\s+TORCH_CUDA_ARCH_LIST\b", makefile, re.M)


def test_wheel_check_expects_what_setup_py_builds(monkeypatch):
    import torch

    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_archs() == SETUP["DEFAULT_ARCHS"] == "8.0;9.0+PTX"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=None: [(7, 5), (8, 6)][i])
    assert default_archs() == "7.5;8.6+PTX"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert default_archs() == "9.0"


# setup.py under another name than __main__: its functions without the build.
SETUP = runpy.run_path(str(ROOT / "setup.py"), run_name="sslext_setup_under_test")


@pytest.mark.parametrize("nvcc,torch_cuda", [("12.8.93", "13.0"), ("13.0.88", "12.9"), ("11.8", "12.1")])
def test_cuda_major_mismatch_names_both_versions_and_the_ways_on(nvcc, torch_cuda):
    msg = SETUP["cuda_version_mismatch"](nvcc, torch_cuda, "/opt/cuda/bin/nvcc")
    want = torch_cuda.split(".")[0]
    assert f"CUDA {nvcc}" in msg and f"CUDA {torch_cuda}" in msg and "/opt/cuda/bin/nvcc" in msg
    assert f"CUDA {want}.x toolkit" in msg and "SSLEXT_FORCE_CPU=1" in msg


@pytest.mark.parametrize("nvcc,torch_cuda", [("13.0.88", "13.0"), ("12.4.131", "12.8"), ("", "13.0"), ("13.0", None)])
def test_cuda_same_major_or_unknown_passes(nvcc, torch_cuda):
    assert SETUP["cuda_version_mismatch"](nvcc, torch_cuda) is None


def test_mismatch_stops_the_build_before_compiling(monkeypatch):
    g = SETUP["extensions"].__globals__
    monkeypatch.setitem(g, "_want_cuda", lambda: True)
    monkeypatch.setitem(g, "_nvcc", lambda: "/fake/cuda-12/bin/nvcc")
    monkeypatch.setitem(g, "_nvcc_version", lambda nvcc: "12.8.93")
    monkeypatch.setattr(g["torch"].version, "cuda", "13.0")
    with pytest.raises(RuntimeError, match=r"CUDA 12\.8\.93.*CUDA 13\.0.*SSLEXT_FORCE_CPU=1"):
        SETUP["extensions"]()
