"""``maxmargin quickstart``: the main job at CPU scale on the bundled digits.

Trains the ``quick-standard``, ``quick-pgd`` and ``quick-mma`` presets (or
reuses finished runs in the same folder), evaluates each on the test split
(quick protocol plus margins and CROWN-certified accuracy, with
gradient-masking checks) and writes one
comparison: ``compare.md`` and ``compare.png`` beside the three runs, and an
``eval.json`` / ``report.md`` / plots inside each run.
"""
from __future__ import annotations

from pathlib import Path

from ..config import load_preset, load_toml, quick_methods
from ..errors import UserError
from ..norm_tables import table_eps_grid
from ..report import compare_runs
from .runs import evaluate_run, train_or_reuse

PRESETS = ("quick-standard", "quick-pgd", "quick-mma", "quick-ibp")
N_TEST = 300           # test digits attacked (of 2000): keeps the whole job under 10 CPU minutes


def presets_for(methods: str | None) -> tuple[str, ...]:
    """Preset names for ``--methods standard,pgd,mma,...`` (default: standard, PGD-AT, MMA and IBP).

    Every ``quick-X`` preset makes ``X`` a choice, so a new method joins by its preset alone.
    """
    if not methods:
        return PRESETS
    known = quick_methods()
    names = []
    for m in (m.strip() for m in methods.split(",") if m.strip()):
        if m not in known:
            raise UserError(f"unknown method {m!r} for --methods; choose from {', '.join(known)}")
        names.append(f"quick-{m}")
    return tuple(names)


def quickstart(out: Path, device: str = "auto", progress: bool = True, methods: str | None = None) -> str:
    """Train (or reuse) the presets ``methods`` names into ``out``, evaluate each, compare them; returns the table."""
    runs = {name: Path(out) / name for name in presets_for(methods)}
    for name, run in runs.items():
        cfg = load_preset(name)
        cfg.device = device
        train_or_reuse(cfg, run, progress)
    for name, run in runs.items():
        norm = load_toml(run / "config.toml").norm     # the run's own norm, whatever the preset says now
        r = evaluate_run(run, protocol="quick", eps=table_eps_grid("digits", norm), n=N_TEST, device=device,
                         margins=True, progress=progress, certify="crown-ibp")
        for flag in r.flags:
            print(f"WARNING ({name}): {flag}")
    table = compare_runs(list(runs.values()), Path(out))
    print(table)
    print(f"Test split of the bundled digits (first {N_TEST}); quick protocol (PGD-50 with CE and with CW) plus a "
          "targeted margin search, robust only if all fail; avg margin = estimate_margin (an upper bound). "
          "'certified' rows: accuracy proven by CROWN bounds and the mean certified radius (lower bounds).")
    print(f"wrote {Path(out) / 'compare.md'}, {Path(out) / 'compare.png'} and a report.md in each run")
    return table
