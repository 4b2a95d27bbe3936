"""``maxmargin margin``: per-example margins of a run's test examples, from above and optionally below."""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..certify import certified_margin
from ..checkpoint import load_model
from ..diagnostics import sandwich_flags
from ..distributed import barrier, init_distributed, rank_world, shutdown
from ..errors import UserError
from ..files import save_torch_atomic, write_json_sealed
from ..margin import margin_search
from ..norm_tables import MARGIN_CAPS, default_eps_grid
from ..report import load_eval, margin_stats, plot_margins, plot_sandwich
from ..runlock import locks_output
from ..sharding import map_examples
from .checks import check_certify, check_counts, check_eps_max
from .eval import wrote
from .runs import RANK_SEED_STRIDE, load_examples, output_folder, run_dir_of

MARGINS_FORMAT = "maxmargin-margins-1"


@locks_output(output_folder)
def margin_run(target: Path, out: Path | None = None, n: int | None = None, batch_size: int = 500,
               device: str = "auto", data_dir: str | None = None, eps_max: float | None = None,
               seed: int = 0, certify: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Margins of a run's test examples: margins.json, margins.pt and the plots (sharded under torchrun).

    ``eps_max`` caps the search (default: the norm's entry of
    :data:`~maxmargin.norm_tables.MARGIN_CAPS`). With ``certify`` (one of
    :data:`maxmargin.certify.METHODS`) every example also gets a certified lower bound:
    ``margins.pt`` holds ``{"upper": ..., "lower": ...}``, ``margins.json``
    both per example and the certified accuracy over the dataset's ε grid,
    and ``margin_sandwich.png`` shows both bounds. Returns ``margins.json``'s content.
    """
    check_eps_max(eps_max)
    check_certify(certify)
    check_counts(n, batch_size)
    info, dev = init_distributed(device)
    model, cfg, _ = load_model(target, dev)
    torch.manual_seed(seed + RANK_SEED_STRIDE * info.rank)
    x, y = load_examples(cfg, data_dir, dev, n, "test")
    cap = eps_max if eps_max is not None else MARGIN_CAPS[cfg.norm]
    if info.main:
        print(f"measuring the margins of {x.shape[0]} examples ({cfg.norm}, search capped at {cap:g}"
              + (f", certified by {certify}" if certify else "") + f") on {dev}"
              + (f" × {info.world} processes" if info.enabled else ""), flush=True)
    m = map_examples(partial(margin_search, model), x, y, norm=cfg.norm, eps_max=cap, batch_size=batch_size)
    stats = {"norm": cfg.norm, "cap": cap, **margin_stats(m)}
    lower = None
    if certify is not None:
        lower = map_examples(partial(certified_margin, model), x, y, norm=cfg.norm, method=certify, eps_max=cap,
                             progress=progress and info.main)
        grid = default_eps_grid(cfg.dataset, cfg.norm)
        stats["certified"] = {"method": certify, **margin_stats(lower),
                              "accuracy": {str(e): int((lower >= e).sum()) / max(len(lower), 1) for e in grid},
                              "empirical_accuracy": {str(e): int((m > e).sum()) / max(len(m), 1) for e in grid}}
        stats["per_example"] = {"upper": m.cpu().tolist(), "lower": lower.cpu().tolist()}
        stats["flags"] = sandwich_flags(lower, m)
        if info.main:
            for flag in stats["flags"]:
                print(f"WARNING: {flag}", file=sys.stderr, flush=True)
    if info.main:
        write_margins(m, stats, Path(out) if out is not None else run_dir_of(target), cfg.norm, cap, lower)
    barrier()
    return stats


def margin_files(certified: bool) -> list[str]:
    """The names of the files :func:`write_margins` writes (``certified``: with lower bounds)."""
    return ["margins.json", "margins.pt"] + (["margin_sandwich.png"] if certified else []) + [
        "margin_hist.png", "margin_cdf.png"]


def write_margins(m: Tensor, stats: dict[str, Any], out: Path, norm: str, cap: float,
                  lower: Tensor | None = None) -> None:
    """``margins.json``, ``margins.pt`` and the plots (:func:`margin_files`); the run's attack curve joins
    the CDF if it has one."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_sealed(out / "margins.json", stats, MARGINS_FORMAT)
    payload = {"upper": m.cpu()} if lower is None else {"upper": m.cpu(), "lower": lower.cpu()}
    save_torch_atomic(payload, out / "margins.pt")
    if lower is not None:
        plot_sandwich(lower, m, out, norm, stats["certified"]["method"])
    plot_margins(m, out, norm, cap, _attack_curve(out / "eval.json", norm))


def _attack_curve(path: Path, norm: str) -> dict[float, float] | None:
    """Robust accuracy per ε from an ``eval.json`` of the same norm, if there is a sound one.

    The margins are written already: a corrupt ``eval.json`` costs the plot
    its attack curve (with a notice naming the file), not the measurement.
    """
    if not path.is_file():
        return None
    try:
        ev = load_eval(path)
        return {float(e): a for e, a in ev["robust_accuracy"].items()} if ev.get("norm") == norm else None
    except UserError as e:
        print(f"maxmargin: note: the margin CDF plot leaves out the attack curve: {e}", file=sys.stderr)
    except (KeyError, ValueError, AttributeError, TypeError):
        pass
    return None


def margin_command(target: Path, out: Path | None = None, n: int | None = None, batch_size: int = 500,
                   device: str = "auto", data_dir: str | None = None, eps_max: float | None = None,
                   seed: int = 0, certify: str | None = None, quiet: bool = False) -> int:
    """Measure (:func:`margin_run`) and print the summary on rank 0; exit code 0."""
    try:
        st = margin_run(target, out=out, n=n, batch_size=batch_size, device=device, data_dir=data_dir,
                        eps_max=eps_max, seed=seed, certify=certify, progress=not quiet)
        main = rank_world()[0] == 0
    finally:
        shutdown()
    if main:
        dest = Path(out) if out is not None else run_dir_of(target)
        print("\n".join(summary(st) + [wrote([dest / f for f in margin_files("certified" in st)])]))
    return 0


def summary(st: dict[str, Any]) -> list[str]:
    """The lines ``maxmargin margin`` prints from ``margins.json``'s content."""
    q = st["quantiles"]
    lines = [f"{st['n']} examples ({st['norm']}): mean margin {st['mean']:.4f}, median {st['median']:.4f}, "
             f"10%/90% {q['0.1']:.4f}/{q['0.9']:.4f}, misclassified {st['zero_fraction']:.3f}"]
    if "certified" in st:
        c = st["certified"]
        lines.append(f"certified lower bounds ({st['norm']}, {c['method']}): mean {c['mean']:.4f}, "
                     f"median {c['median']:.4f}; certified accuracy "
                     + ", ".join(f"{e}: {a:.4f}" for e, a in c["accuracy"].items()))
    return lines
