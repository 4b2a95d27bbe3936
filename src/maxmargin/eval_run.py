"""Evaluate and measure margins of a trained run: what ``maxmargin eval`` and ``maxmargin margin`` do."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch

from .checkpoint import load_model
from .config import write_atomic
from .data import load_dataset
from .distributed import barrier, init_distributed
from .errors import UserError
from .evaluate import EvalResult, evaluate
from .certify import METHODS as CERTIFY_METHODS, certify_search
from .margin import margin_search
from .norm_tables import MARGIN_CAPS, default_eps_grid
from .report import margin_stats, plot_margins, plot_sandwich, write_eval_report

def run_dir_of(path: Path) -> Path:
    """A run directory, or the run directory a checkpoint file belongs to (else its folder)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return path.parent


def test_data(cfg, data_dir: str | None, device: torch.device, n: int | None, split: str):
    ds = load_dataset(cfg.dataset, data_dir if data_dir is not None else cfg.data_dir, cfg.val_size, device)
    part = {"test": ds.test, "val": ds.val}[split]
    n = len(part) if n is None or n <= 0 else min(n, len(part))
    return part.images(slice(0, n)), part.y[:n]


def parse_eps(text: str | None) -> list[float] | None:
    if text is None:
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(float(item.split("/")[0]) / float(item.split("/")[1]) if "/" in item else float(item))
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--eps {text!r}: expected numbers like 0.1,0.2 or 8/255") from None
        if not math.isfinite(out[-1]):
            raise UserError(f"--eps {text!r}: every radius must be a finite number")
    if not out:
        raise UserError("--eps needs at least one value")
    if any(e < 0 for e in out):
        raise UserError(f"--eps values must be >= 0, got {text!r}")
    return out


def eval_run(target: Path, protocol: str = "quick", eps: Sequence[float] | None = None,
             transfer_from: Sequence[Path] = (), out: Path | None = None, n: int | None = None,
             batch_size: int = 500, device: str = "auto", data_dir: str | None = None, split: str = "test",
             margins: bool | None = None, progress: bool = True, seed: int = 0,
             certify: str | None = None) -> EvalResult:
    """Evaluate a run's checkpoint and write eval.json, report.md and the plots.

    Under ``torchrun`` every rank attacks a shard of the test set; all ranks
    get the full result and rank 0 alone writes the files. ``certify``
    (``"crown"`` or ``"ibp"``) adds certified accuracy at every ε.
    """
    _check_certify(certify)
    check_counts(n, batch_size)
    info, dev = init_distributed(device)
    model, cfg, ckpt = load_model(target, dev)
    sources, names = [], []
    for src in transfer_from:
        m, _, _ = load_model(src, dev)
        sources.append(m)
        names.append(run_dir_of(src).name)
    torch.manual_seed(seed + 1_000_003 * info.rank)
    x, y = test_data(cfg, data_dir, dev, n, split)
    grid = list(eps) if eps is not None else default_eps_grid(cfg.dataset, cfg.norm)
    use_margins = protocol == "paper" if margins is None else margins
    m = None
    if use_margins:
        m = margin_search(model, x, y, cfg.norm, 2 * max(grid), batch_size, distributed=True)
    cert = None
    if certify is not None and max(grid) > 0:
        cert = certify_search(model, x, y, cfg.norm, max(grid), certify, distributed=True,
                              progress=progress and info.main)
    result = evaluate(model, x, y, norm=cfg.norm, eps=grid, protocol=protocol, sources=sources,
                      batch_size=batch_size, margins=m, margin_attack=use_margins, source_names=names,
                      progress=progress and info.main, distributed=True, certified=cert,
                      certify_method=certify if cert is not None else None)
    out = Path(out) if out is not None else run_dir_of(target)
    if info.main:
        write_eval_report(result, out, f"Evaluation of {run_dir_of(target).name}",
                          {"checkpoint": str(target), "step": ckpt.get("step"), "split": split,
                           "transfer_from": [str(s) for s in transfer_from], "seed": seed,
                           "processes": info.world})
    barrier()
    return result


def check_counts(n: int | None, batch_size: int) -> None:
    """The command line's example count and batch size, before anything is loaded or written."""
    if n is not None and n < 1:
        raise UserError(f"--n must be >= 1 (or left out for the whole split), got {n}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


def _check_certify(method: str | None) -> None:
    if method is not None and method not in CERTIFY_METHODS:
        raise UserError(f"--certify {method!r}: choose {' or '.join(CERTIFY_METHODS)}")


def margin_run(target: Path, out: Path | None = None, n: int | None = None, batch_size: int = 500,
               device: str = "auto", data_dir: str | None = None, eps_max: float | None = None,
               seed: int = 0, certify: str | None = None, progress: bool = True) -> dict:
    """Margins of a run's test examples: margins.json, margins.pt and the plots (sharded under torchrun).

    With ``certify`` (``"crown"`` or ``"ibp"``) every example also gets a
    certified lower bound: ``margins.pt`` holds ``{"upper": ..., "lower": ...}``,
    ``margins.json`` both per example and the certified accuracy over the
    dataset's ε grid, and ``margin_sandwich.png`` shows both bounds.
    """
    cap = eps_max
    if cap is not None and not 0 < cap < float("inf"):
        raise UserError(f"--eps-max must be a finite number > 0, got {cap}")
    _check_certify(certify)
    check_counts(n, batch_size)
    info, dev = init_distributed(device)
    model, cfg, _ = load_model(target, dev)
    torch.manual_seed(seed + 1_000_003 * info.rank)
    x, y = test_data(cfg, data_dir, dev, n, "test")
    cap = cap if cap is not None else MARGIN_CAPS[cfg.norm]
    m = margin_search(model, x, y, cfg.norm, cap, batch_size, distributed=True)
    stats = {"norm": cfg.norm, "cap": cap, **margin_stats(m)}
    lower = None
    if certify is not None:
        lower = certify_search(model, x, y, cfg.norm, cap, certify, distributed=True, progress=progress and info.main)
        grid = default_eps_grid(cfg.dataset, cfg.norm)
        stats["certified"] = {"method": certify, **margin_stats(lower),
                              "accuracy": {str(e): int((lower >= e).sum()) / max(len(lower), 1) for e in grid},
                              "empirical_accuracy": {str(e): int((m > e).sum()) / max(len(m), 1) for e in grid}}
        stats["per_example"] = {"upper": m.cpu().tolist(), "lower": lower.cpu().tolist()}
    if info.main:
        _write_margins(m, stats, Path(out) if out is not None else run_dir_of(target), cfg.norm, cap, lower)
    barrier()
    return stats


def _write_margins(m: torch.Tensor, stats: dict, out: Path, norm: str, cap: float,
                   lower: torch.Tensor | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "margins.json", json.dumps(stats, indent=2))
    payload = {"upper": m.cpu()} if lower is None else {"upper": m.cpu(), "lower": lower.cpu()}
    torch.save(payload, out / "margins.pt.tmp")
    (out / "margins.pt.tmp").replace(out / "margins.pt")
    if lower is not None:
        plot_sandwich(lower, m, out, norm, stats["certified"]["method"])
    curve = None
    if (out / "eval.json").is_file():   # put the attack curve beside the CDF's prediction
        try:
            ev = json.loads((out / "eval.json").read_text())
            curve = {float(e): a for e, a in ev["robust_accuracy"].items()} if ev.get("norm") == norm else None
        except (json.JSONDecodeError, KeyError, ValueError):
            curve = None
    plot_margins(m, out, norm, cap, curve)
