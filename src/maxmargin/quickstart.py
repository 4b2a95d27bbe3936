"""``maxmargin quickstart``: the main job at CPU scale on the bundled digits.

Trains the ``quick-standard``, ``quick-pgd`` and ``quick-mma`` presets (or
reuses finished runs in the same folder), then compares them on the test
split: clean accuracy, PGD accuracy at two radii and the average margin.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .attacks import pgd
from .checkpoint import load_checkpoint, load_model
from .config import load_preset, write_atomic
from .data import load_dataset
from .margin import estimate_margin
from .train import resolve_device, train

PRESETS = ("quick-standard", "quick-pgd", "quick-mma")
EPS = (0.1, 0.3)
N_TEST = 500           # test digits attacked (of 2000) to keep the whole job well under 10 CPU minutes
MARGIN_CAP = 0.5


def _train_or_reuse(name: str, out: Path, device: str, progress: bool) -> None:
    cfg = load_preset(name)
    cfg.device = device
    last = out / "checkpoints" / "last.pt"
    if last.is_file():
        if int(load_checkpoint(last)["step"]) >= cfg.steps:
            print(f"{name}: reusing the finished run in {out}")
            return
        train(cfg, out, resume=True, progress=progress)
    else:
        train(cfg, out, progress=progress)


def compare(runs: dict[str, Path], device: torch.device, n: int = N_TEST) -> list[dict]:
    ds = load_dataset("digits", device=device)
    x, y = ds.test.images(slice(0, n)), ds.test.y[:n]
    rows = []
    torch.manual_seed(0)
    for name, run in runs.items():
        model, cfg, _ = load_model(run, device)
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        row = {"run": name, "clean": clean}
        for eps in EPS:
            # robust only if both a CE and a CW PGD fail
            ok = torch.ones_like(y, dtype=torch.bool)
            for loss in ("ce", "cw"):
                x_adv = pgd(model, x, y, norm="linf", eps=eps, steps=20, step_size=eps / 8, loss=loss)
                with torch.no_grad():
                    ok &= model(x_adv).argmax(1) == y
            row[f"pgd@{eps}"] = float(ok.float().mean())
        m = estimate_margin(model, x, y, norm="linf", eps_max=MARGIN_CAP, steps=20, search_steps=10,
                            targets=3, rounds=1)
        row["margin"] = float(m.mean())
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ["run", "clean acc"] + [f"PGD acc ε={e}" for e in EPS] + ["avg margin (L∞)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], f"{r['clean']:.3f}"] + [f"{r[f'pgd@{e}']:.3f}" for e in EPS] + [f"{r['margin']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quickstart(out: Path, device: str = "auto", progress: bool = True) -> list[dict]:
    dev = resolve_device(device)
    runs = {name: out / name for name in PRESETS}
    for name, run in runs.items():
        _train_or_reuse(name, run, device, progress)
    rows = compare(runs, dev)
    text = table(rows)
    note = (f"\nTest split of the bundled digits (first {N_TEST}). PGD: 20 steps of ε/8, CE and CW losses, an example "
            f"counts as robust only if both fail. Margin: estimate_margin (upper bound, capped at {MARGIN_CAP}).\n")
    write_atomic(out / "summary.md", "# maxmargin quickstart\n\n" + text + "\n" + note)
    print(text)
    print(note.strip())
    print(f"wrote {out / 'summary.md'}")
    return rows
