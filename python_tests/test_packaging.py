"""The build's arch defaults agree everywhere, and the wheel check reads TORCH_CUDA_ARCH_LIST right.

(The wheel itself is checked by ``make wheel`` and ``make test-install``: they need a build.)
"""
import re
from pathlib import Path

import pytest

from check_wheel_archs import parse_arch_list

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
        "CMakeLists.txt": re.search(r'set\(ENV\{TORCH_CUDA_ARCH_LIST\} "([^"]+)"\)',
                                    (ROOT / "CMakeLists.txt").read_text()),
        "Makefile": re.search(r"^TORCH_CUDA_ARCH_LIST \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M),
    }
    archs = {k: m.group(1) if m else None for k, m in found.items()}
    assert len(set(archs.values())) == 1 and None not in archs.values(), archs
    sass, ptx = parse_arch_list(archs["setup.py"])
    assert ptx == {max(sass)}, f"+PTX belongs on the newest arch: {archs['setup.py']}"
