"""No file of the repository names a folder of one particular machine.

Paths come in as arguments and config keys; a path that exists only on the
machine where a file was written sends every other user to a dead end.
benchmarks/results/ is exempt: measured results record where they were made.
"""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXEMPT = ("benchmarks/results/",)

# Built from pieces so that this file does not match itself.
_PATTERNS = [
    ("a /work tree", "/" + "work/"),
    ("a sibling shared folder", r"\.\./" + r"shared\b"),
    ("a literal folder under /tmp", r"(?<![\w.$}])/" + r"tmp/[A-Za-z0-9_.-]+"),
    ("a home directory", r"(?<![\w.])/" + r"(home|Users)/[A-Za-z0-9_.-]+"),
    ("root's home directory", r"(?<![\w.])/" + r"root/"),
    ("a Windows user folder", r"[A-Za-z]:\\\\" + r"Users\\\\"),
]
_RX = [(why, re.compile(p)) for why, p in _PATTERNS]


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        return [REPO / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        skip = {".git", ".venv", "build", "build-cmake", "runs", "data", "__pycache__", ".bench-pkgs"}
        return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]


def test_the_patterns_catch_machine_paths():
    hits = [
        "/" + "work/shared/data",
        "../" + "shared/docs",
        "/" + "tmp/sslext-data",
        "/" + "home/alice/x",
        "/" + "root/.cache",
    ]
    misses = [
        "tmp_path / 'x'",
        "$OUT/.scratch",
        "/usr/share/datasets/fashion-mnist",
        "data/cifar-10-batches-py",
        "https://example.org/tmp/x",
    ]
    for s in hits:
        assert any(rx.search(s) for _, rx in _RX), s
    for s in misses:
        assert not any(rx.search(s) for _, rx in _RX), s


def test_no_tracked_file_names_a_machine_path():
    found = []
    this = Path(__file__).resolve()
    for path in _tracked_files():
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(EXEMPT) or path.resolve() == this or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files (plots)
        for i, line in enumerate(text.splitlines(), 1):
            for why, rx in _RX:
                m = rx.search(line)
                if m:
                    found.append(f"{rel}:{i}: {why}: {m.group(0)!r}")
    assert not found, "machine paths in the repository:\n" + "\n".join(found)
