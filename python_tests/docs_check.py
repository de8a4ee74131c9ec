"""Run the runnable code blocks of README.md and docs/*.md, so the docs cannot rot.

A fenced block whose info string is ``bash runnable`` or ``python runnable``
is executed on the CPU; every other block is illustrative. Each block runs in
a scratch working copy of the repository (a temporary directory whose entries
link to the repository's, except the folders runs write to), so relative paths
such as ``configs/`` work and nothing lands in the source tree:

* ``python`` blocks run as a script with the interpreter running this check,
  the repository first on ``PYTHONPATH`` (its built extension is imported);
* ``bash`` blocks run under ``bash -euo pipefail`` with that interpreter first
  on ``PATH`` as ``python``, and ``sslext-train`` / ``sslext-eval`` commands
  that call ``sslext.cli`` (so an in-place build needs no install).

Blocks of one file run in order in one scratch copy, so a block may use what
an earlier block of the same page wrote (a run, then its evaluation). A
failure reports ``file:line`` of the block's opening fence and the output's
tail.

    python python_tests/docs_check.py            # README.md and docs/*.md
    python python_tests/docs_check.py docs/api.md --list
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
LANGUAGES = ("bash", "python")
# Folders a run writes into: fresh in every scratch copy, never linked.
SCRATCH_ONLY = {"runs", "data", ".git", "build", ".venv", ".bench-pkgs", ".pytest_cache", ".hypothesis"}
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
TIMEOUT_S = 120


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str

    @property
    def where(self) -> str:
        try:
            rel = self.path.relative_to(REPO)
        except ValueError:
            rel = self.path
        return f"{rel}:{self.line}"


def extract_blocks(path: Path) -> List[Block]:
    """The runnable blocks of one markdown file, in order.

    An unterminated fence is an error (it would silently hide the rest of the page).
    """
    blocks: List[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, words = m.group("fence"), m.group("info").split()
        start, body = i, []
        i += 1
        while i < len(lines):
            close = FENCE.match(lines[i])
            if close and close.group("fence")[0] == fence[0] and len(close.group("fence")) >= len(fence) \
                    and not close.group("info").strip():
                break
            body.append(lines[i][len(m.group("indent")):] if lines[i].startswith(m.group("indent")) else lines[i])
            i += 1
        else:
            raise ValueError(f"{path}:{start + 1}: code fence opened here is never closed")
        i += 1
        if len(words) >= 2 and words[0] in LANGUAGES and "runnable" in words[1:]:
            blocks.append(Block(path, start + 1, words[0], "\n".join(body) + "\n"))
    return blocks


def default_files() -> List[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def make_scratch(root: Path) -> Path:
    """A working copy of the repository in ``root``: links to every entry but the output folders."""
    for entry in REPO.iterdir():
        if entry.name not in SCRATCH_ONLY:
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    bin_dir = root / ".docs-bin"
    bin_dir.mkdir()
    for name, func in (("sslext-train", "train_main"), ("sslext-eval", "eval_main")):
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom sslext.cli import {func}\n"
                          f"sys.exit({func}(sys.argv[1:]))\n")
        script.chmod(0o755)
    # A wrapper, not a link: a link would lose the virtual environment's site-packages.
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return bin_dir


def run_block(block: Block, cwd: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "2")
    env["MPLBACKEND"] = "Agg"
    if block.language == "python":
        cmd = [sys.executable, "-"]
    else:
        cmd = ["bash", "-euo", "pipefail", "-s"]
    return subprocess.run(cmd, input=block.code, cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=TIMEOUT_S)


def check(files: Sequence[Path], verbose: bool = True) -> List[str]:
    """Run every runnable block of ``files``; the list of failures (empty when all pass)."""
    failures: List[str] = []
    for path in files:
        try:
            blocks = extract_blocks(path)
        except ValueError as e:
            failures.append(str(e))
            continue
        if not blocks:
            continue
        with tempfile.TemporaryDirectory(prefix="sslext-docs-") as tmp:
            bin_dir = make_scratch(Path(tmp))
            for block in blocks:
                t0 = time.perf_counter()
                try:
                    res = run_block(block, Path(tmp), bin_dir)
                    ok, out = res.returncode == 0, res.stdout + res.stderr
                    status = f"exit {res.returncode}"
                except subprocess.TimeoutExpired as e:
                    ok, status = False, f"timed out after {TIMEOUT_S} s"
                    out = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
                dt = time.perf_counter() - t0
                if verbose:
                    print(f"{'ok  ' if ok else 'FAIL'} {block.where} ({block.language}, {dt:.1f} s)", flush=True)
                if not ok:
                    tail = "\n".join(out.splitlines()[-25:])
                    failures.append(f"{block.where}: {block.language} block failed ({status}):\n{tail}")
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    p.add_argument("--list", action="store_true", help="list the runnable blocks without running them")
    args = p.parse_args(argv)
    files = [f.resolve() for f in args.files] or default_files()
    if args.list:
        for f in files:
            for b in extract_blocks(f):
                print(f"{b.where} {b.language}")
        return 0
    t0 = time.perf_counter()
    failures = check(files)
    for f in failures:
        print(f"\n{f}", file=sys.stderr)
    print(f"docs-check: {len(failures)} failure(s), {time.perf_counter() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
