"""The docs' runnable blocks run (make docs-check), and the checker itself finds what it must."""

from pathlib import Path

import pytest
from docs_check import REPO, broken_links, check, default_files, extract_blocks


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_extracts_only_runnable_blocks_with_their_line(tmp_path):
    page = _page(
        tmp_path,
        "\n".join(
            [
                "# title",  # 1
                "```bash",  # 2  illustrative
                "rm -rf /",  # 3
                "```",  # 4
                "```python runnable",  # 5
                "print('a')",  # 6
                "```",  # 7
                "````bash runnable",  # 8  a longer fence may contain ``` lines
                "echo '```'",  # 9
                "````",  # 10
                "   ```text runnable",  # 11 not a language we run
                "x",  # 12
                "   ```",  # 13
            ]
        )
        + "\n",
    )
    blocks = extract_blocks(page)
    assert [(b.line, b.language, b.code) for b in blocks] == [
        (5, "python", "print('a')\n"),
        (8, "bash", "echo '```'\n"),
    ]


def test_unclosed_fence_is_an_error(tmp_path):
    page = _page(tmp_path, "text\n```python runnable\nprint(1)\n")
    with pytest.raises(ValueError, match=r"page.md:2: code fence opened here is never closed"):
        extract_blocks(page)


def test_failure_names_file_and_line_and_blocks_share_a_scratch_copy(tmp_path):
    page = _page(
        tmp_path,
        "\n".join(
            [
                "```bash runnable",
                "test -d configs && mkdir -p runs && echo hi > runs/x",  # the repository's files are visible
                "```",
                "```python runnable",
                "import pathlib",
                "assert pathlib.Path('runs/x').read_text() == 'hi\\n'",  # an earlier block's output
                "```",
                "",
                "```python runnable",
                "x = 1",
                "raise ValueError('broken example')",
                "```",
            ]
        )
        + "\n",
    )
    failures = check([page], verbose=False)
    assert len(failures) == 1
    assert failures[0].startswith(f"{page}:9: python block failed")
    # the traceback points into the page: the raise is on line 11
    assert "broken example" in failures[0] and f'File "{page}", line 11' in failures[0]
    assert not (REPO / "runs" / "x").exists()


def test_every_runnable_block_of_the_docs_runs():
    files = default_files()
    assert (REPO / "README.md") in files
    assert len(extract_blocks(REPO / "README.md")) >= 2, "README's quickstarts must be runnable"
    failures = check(files, verbose=False)
    assert not failures, "\n\n".join(failures)


def test_link_check_finds_missing_files(tmp_path):
    (tmp_path / "there.md").write_text("# A\n")
    page = _page(
        tmp_path,
        "# B\n[ok](there.md#a) [url](https://example.org) [anchor](#b)\n"
        "```bash\n[not a link](missing.md)\n```\n[bad](missing.md)\n",
    )
    assert broken_links(page) == [f"{page}:6: broken link missing.md"]


def test_link_check_finds_missing_sections(tmp_path):
    (tmp_path / "there.md").write_text(
        "# The backbone on its own: `sslext-export`\n"
        "## CPU throughput: bf16 and channels_last\n"
        "## Results\n## Results\n"
        "```bash\n# not a heading\n```\n"
        '<a id="kept"></a>\n'
    )
    page = _page(
        tmp_path,
        "# Here\n"
        "[a](there.md#the-backbone-on-its-own-sslext-export) [b](there.md#cpu-throughput-bf16-and-channels_last)\n"
        "[c](there.md#results-1) [d](there.md#kept) [e](#here)\n"
        "[f](there.md#results-2) [g](there.md#not-a-heading) [h](#nowhere)\n",
    )
    assert broken_links(page) == [
        f"{page}:4: broken link there.md#results-2 (no section #results-2 in there.md)",
        f"{page}:4: broken link there.md#not-a-heading (no section #not-a-heading in there.md)",
        f"{page}:4: broken link #nowhere (no section #nowhere in page.md)",
    ]


def test_relative_links_of_the_docs_resolve():
    broken = [b for f in default_files() for b in broken_links(f)]
    assert not broken, "\n".join(broken)


def test_config_page_is_generated_from_the_schema_and_current(tmp_path):
    from docs_check import config_page_problems

    assert config_page_problems() == []
    stale = tmp_path / "config.md"
    stale.write_text((REPO / "docs" / "config.md").read_text().replace("| `seed` |", "| `sed` |"))
    assert any("stale" in p for p in config_page_problems(stale))


def test_every_config_key_has_a_meaning(monkeypatch):
    from docs_check import config_page_problems

    import sslext.app.config_schema as C

    monkeypatch.setitem(C.MEANINGS, "optim.lr", "")
    assert (
        "config key without a meaning (sslext/app/config_schema.py MEANINGS or the method's HELP): optim.lr"
        in config_page_problems()
    )
