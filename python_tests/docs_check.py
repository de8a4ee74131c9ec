"""Run the runnable code blocks of README.md and docs/*.md, so the docs cannot rot.

A fenced block whose info string is ``bash runnable`` or ``python runnable``
is executed on the CPU; every other block is illustrative. Each block runs in
a scratch working copy of the repository (a temporary directory whose entries
link to the repository's, except the folders runs write to), so relative paths
such as ``configs/`` work and nothing lands in the source tree:

* ``python`` blocks run with the interpreter running this check, the
  repository first on ``PYTHONPATH`` (its built extension is imported); each
  block gets fresh globals, and consecutive python blocks share one process
  (torch is imported once);
* ``bash`` blocks run under ``bash -euo pipefail`` with that interpreter first
  on ``PATH`` as ``python``, and ``sslext-train`` / ``sslext-eval`` commands
  that call ``sslext.app.cli`` (so an in-place build needs no install).

It also reports relative links (outside code blocks) to files that do not exist,
and links to a section (``page.md#section``, ``#section``) of a markdown page
that has no heading with that anchor (GitHub's rule: lower case, punctuation
but ``-`` and ``_`` dropped, spaces to ``-``, ``-1``, ``-2`` for repeats).

Blocks of one file run in order in one scratch copy, so a block may use what
an earlier block of the same page wrote (a run, then its evaluation). A
failure reports ``file:line`` of the block's opening fence and the output's
tail.

    python python_tests/docs_check.py            # README.md and docs/*.md
    python python_tests/docs_check.py docs/api.md --list
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

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
            if (
                close
                and close.group("fence")[0] == fence[0]
                and len(close.group("fence")) >= len(fence)
                and not close.group("info").strip()
            ):
                break
            body.append(lines[i][len(m.group("indent")) :] if lines[i].startswith(m.group("indent")) else lines[i])
            i += 1
        else:
            raise ValueError(f"{path}:{start + 1}: code fence opened here is never closed")
        i += 1
        if len(words) >= 2 and words[0] in LANGUAGES and "runnable" in words[1:]:
            blocks.append(Block(path, start + 1, words[0], "\n".join(body) + "\n"))
    return blocks


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _prose_lines(path: Path):
    """(line number, line) of a page outside its fenced code blocks."""
    in_code = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped, lower case, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    """Every section anchor of a markdown page (repeated headings get ``-1``, ``-2``...)."""
    seen: dict = {}
    out = set()
    for _, line in _prose_lines(path):
        out.update(HTML_ANCHOR.findall(line))
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(1))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def broken_links(path: Path) -> List[str]:
    """Relative links of a page (outside code) whose file, or whose section in a
    markdown file, does not exist, as ``file:line: broken link target``."""
    out: List[str] = []
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    for n, line in _prose_lines(path):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # a URL
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part) if file_part else path
            if not dest.exists():
                out.append(f"{where}:{n}: broken link {target}")
            elif anchor and dest.suffix == ".md" and dest.is_file() and anchor not in anchors(dest):
                out.append(f"{where}:{n}: broken link {target} (no section #{anchor} in {dest.name})")
    return out


def default_files() -> List[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def make_scratch(root: Path) -> Path:
    """A working copy of the repository in ``root``: links to every entry but the output folders."""
    for entry in REPO.iterdir():
        if entry.name not in SCRATCH_ONLY:
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    bin_dir = root / ".docs-bin"
    bin_dir.mkdir()
    for name, func in (("sslext-train", "train_main"), ("sslext-eval", "eval_main"), ("sslext-export", "export_main")):
        script = bin_dir / name
        script.write_text(
            f"#!{sys.executable}\nimport sys\nfrom sslext.app.cli import {func}\nsys.exit({func}(sys.argv[1:]))\n"
        )
        script.chmod(0o755)
    # A wrapper, not a link: a link would lose the virtual environment's site-packages.
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return bin_dir


# Runs consecutive python blocks in one interpreter (importing torch once), each in
# fresh globals, with its output captured; compiled with the page's line numbers.
_PY_DRIVER = r"""
import contextlib, io, json, sys, traceback
blocks = json.load(open(sys.argv[1]))
results = []
for b in blocks:
    out = io.StringIO()
    ok = True
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(compile("\n" * b["line"] + b["code"], b["file"], "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            ok = e.code in (None, 0)
            if not ok:
                print(f"SystemExit: {e.code}")
        except BaseException:
            ok = False
            traceback.print_exc()
    results.append({"ok": ok, "output": out.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


def _env(bin_dir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")  # the blocks are small; threads would only contend
    env["MPLBACKEND"] = "Agg"
    # The docs' examples run as a user runs them: train.device auto is theirs to use.
    env.pop("SSLEXT_TEST_FORBID_AUTO_DEVICE", None)
    return env


def _timeout_output(e: subprocess.TimeoutExpired) -> str:
    return "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))


def run_bash(block: Block, cwd: Path, bin_dir: Path) -> Tuple[bool, str, str]:
    """(ok, status, output) of one bash block."""
    try:
        res = subprocess.run(
            ["bash", "-euo", "pipefail", "-s"],
            input=block.code,
            cwd=cwd,
            env=_env(bin_dir),
            text=True,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        return False, f"timed out after {TIMEOUT_S} s", _timeout_output(e)
    return res.returncode == 0, f"exit {res.returncode}", res.stdout + res.stderr


def run_python(blocks: List[Block], cwd: Path, bin_dir: Path) -> List[Tuple[bool, str, str]]:
    """(ok, status, output) of each of consecutive python blocks, run in one interpreter."""
    spec = cwd / ".docs-bin" / "blocks.json"
    result = cwd / ".docs-bin" / "results.json"
    spec.write_text(json.dumps([{"file": b.where.rsplit(":", 1)[0], "line": b.line, "code": b.code} for b in blocks]))
    if result.exists():
        result.unlink()
    timeout = TIMEOUT_S * len(blocks)
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PY_DRIVER, str(spec), str(result)],
            cwd=cwd,
            env=_env(bin_dir),
            text=True,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        return [(False, f"timed out after {timeout} s", _timeout_output(e))] * len(blocks)
    if res.returncode != 0 or not result.exists():  # the interpreter itself died
        return [(False, f"interpreter exit {res.returncode}", res.stdout + res.stderr)] * len(blocks)
    return [(r["ok"], "exception" if not r["ok"] else "ok", r["output"]) for r in json.loads(result.read_text())]


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
        # Consecutive python blocks form one group (one interpreter); each bash block is its own.
        groups: List[List[Block]] = []
        for b in blocks:
            if b.language == "python" and groups and groups[-1][0].language == "python":
                groups[-1].append(b)
            else:
                groups.append([b])
        with tempfile.TemporaryDirectory(prefix="sslext-docs-") as tmp:
            bin_dir = make_scratch(Path(tmp))
            for group in groups:
                t0 = time.perf_counter()
                if group[0].language == "python":
                    outcomes = run_python(group, Path(tmp), bin_dir)
                else:
                    outcomes = [run_bash(group[0], Path(tmp), bin_dir)]
                dt = time.perf_counter() - t0
                for block, (ok, status, out) in zip(group, outcomes):
                    if verbose:
                        print(
                            f"{'ok  ' if ok else 'FAIL'} {block.where} ({block.language}, "
                            f"{dt:.1f} s for {len(group)} block(s))",
                            flush=True,
                        )
                    if not ok:
                        tail = "\n".join(out.splitlines()[-25:])
                        failures.append(f"{block.where}: {block.language} block failed ({status}):\n{tail}")
    return failures


def config_page_problems(page: Path = REPO / "docs" / "config.md") -> List[str]:
    """docs/config.md is generated from the config schema: stale or missing meanings fail."""
    from sslext.app.config import config_markdown, missing_meanings

    out = [
        f"config key without a meaning (sslext/app/config_schema.py MEANINGS or the method's HELP): {k}"
        for k in missing_meanings()
    ]
    if not page.is_file() or page.read_text() != config_markdown():
        out.append(
            f"{page.name} is stale: regenerate it with `python -m sslext.app.config --markdown > docs/config.md`"
        )
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    p.add_argument("--list", action="store_true", help="list the runnable blocks without running them")
    p.add_argument("--no-links", action="store_true", help="skip the check of relative links")
    args = p.parse_args(argv)
    files = [f.resolve() for f in args.files] or default_files()
    if args.list:
        for f in files:
            for b in extract_blocks(f):
                print(f"{b.where} {b.language}")
        return 0
    t0 = time.perf_counter()
    failures = [] if args.no_links else [b for f in files for b in broken_links(f)]
    failures += config_page_problems()
    failures += check(files)
    for f in failures:
        print(f"\n{f}", file=sys.stderr)
    print(f"docs-check: {len(failures)} failure(s), {time.perf_counter() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
