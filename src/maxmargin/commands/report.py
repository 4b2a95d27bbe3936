"""``maxmargin report``: several evaluated runs in one table and one plot."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..report import compare_runs


def report_command(runs: Sequence[Path], out: Path | None = None) -> int:
    """Write ``compare.md`` and ``compare.png`` (default: beside the first run), print the table; exit code 0."""
    runs = [Path(r) for r in runs]
    out = Path(out) if out is not None else runs[0].parent
    print(compare_runs(runs, out))
    print(f"wrote {out / 'compare.md'} and {out / 'compare.png'}")
    return 0
