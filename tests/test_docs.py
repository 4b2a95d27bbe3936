"""The documentation runs as written.

Every fenced ```python block of README.md and docs/**/*.md is executed. A page's
blocks run in order in one namespace (a page may build on its earlier blocks,
never on another page's), in a fresh temporary working directory, and none may
raise. Shell commands are ```bash blocks and are not run. A block whose info
string carries ``title="sketch"`` is shown as an illustration and not run; such
blocks must stay rare.
"""
from __future__ import annotations

import linecache
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
SKETCH = 'title="sketch"'
MAX_SKETCHES = 3


@dataclass
class Block:
    page: str
    index: int     # 1-based among the page's python blocks
    line: int      # 1-based line of the opening fence
    source: str
    sketch: bool

    @property
    def name(self) -> str:
        return f"{self.page}, python block {self.index} (line {self.line})"


def pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def python_blocks(path: Path) -> list[Block]:
    """The fenced python blocks of a markdown file, in order."""
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, indent = m["fence"], m["info"].strip(), len(m["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and set(lines[j].strip()) == {fence[0]}):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        lang = info.split()[0].lower() if info else ""
        if lang in ("python", "py"):
            blocks.append(Block(page, len(blocks) + 1, i + 1, "\n".join(body) + "\n", SKETCH in info))
        i = j + 1
    return blocks


PAGES = {p.relative_to(ROOT).as_posix(): python_blocks(p) for p in pages()}
RUNNABLE = {page: blocks for page, blocks in PAGES.items() if any(not b.sketch for b in blocks)}


def test_blocks_are_found() -> None:
    """The collector sees the pages and their blocks (the test below is not vacuous)."""
    assert "README.md" in RUNNABLE
    assert len(RUNNABLE) >= 5, sorted(RUNNABLE)
    sketches = [b.name for blocks in PAGES.values() for b in blocks if b.sketch]
    assert len(sketches) <= MAX_SKETCHES, f"too many non-runnable sketch blocks: {sketches}"


@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_page_code_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # the examples are tiny; one thread is faster on a shared CPU
    try:
        with torch.random.fork_rng():
            for block in RUNNABLE[page]:
                if block.sketch:
                    continue
                filename = f"<{block.name}>"
                linecache.cache[filename] = (len(block.source), None, block.source.splitlines(True), filename)
                try:
                    exec(compile(block.source, filename, "exec"), namespace)
                except Exception:
                    pytest.fail(f"{block.name} raised:\n{traceback.format_exc()}", pytrace=False)
    finally:
        torch.set_num_threads(threads)


def test_no_references_outside_the_repository() -> None:
    """The pages cite nothing the project does not contain, and leave nothing marked unfinished."""
    for path in pages():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        assert "DESIGN" not in text, f"{rel} cites the design notes, which are not in the repository"
        assert "TODO" not in text, f"{rel} has a TODO"


def test_readme_links_exist() -> None:
    """Relative links of the README (which mkdocs does not build) point at files of the repository."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", text)
    assert targets, "the README links into docs/"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
