"""``maxmargin eval``: robust accuracy of a run over an ε grid, with gradient-masking checks."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..distributed import rank_world, shutdown
from ..evaluate import EvalResult
from ..report import eval_report_files
from .runs import evaluate_run, run_dir_of


def summary(r: EvalResult) -> list[str]:
    """The lines ``maxmargin eval`` prints: accuracies, certified accuracies, then one warning per flag."""
    lines = [f"clean accuracy {r.clean_accuracy:.4f}; robust accuracy ({r.norm}) " +
             ", ".join(f"{e:.4g}: {a:.4f}" for e, a in r.robust_accuracy.items()) +
             f"; average {r.average_robust_accuracy:.4f} over ε ≤ {max(r.averaged):.4g}; AvgAcc {r.avg_acc:.4f}"]
    cert = r.certified_accuracy()
    if cert:
        lines.append(f"certified accuracy ({r.norm}, {r.certify_method}) " +
                     ", ".join(f"{e:.4g}: {a:.4f}" for e, a in cert.items()))
    return lines + [f"WARNING ({r.norm}): {flag}" for flag in r.flags]


def wrote(files: Sequence[Path]) -> str:
    """``wrote DIR/first, second, ...``: where a command put its outputs."""
    return f"wrote {files[0]}" + "".join(f", {f.name}" for f in files[1:])


def eval_command(target: Path, protocol: str = "quick", eps: Sequence[float] | None = None,
                 transfer_from: Sequence[Path] = (), out: Path | None = None, n: int | None = None,
                 batch_size: int = 500, device: str = "auto", data_dir: str | None = None, split: str = "test",
                 margins: bool | None = None, quiet: bool = False, seed: int = 0, certify: str | None = None,
                 norm: str | None = None, resume: bool = False) -> int:
    """Evaluate (:func:`~maxmargin.commands.runs.evaluate_run`), print the summary on rank 0; exit code 0."""
    try:
        r = evaluate_run(target, protocol=protocol, eps=eps, transfer_from=transfer_from, out=out, n=n,
                         batch_size=batch_size, device=device, data_dir=data_dir, split=split, margins=margins,
                         progress=not quiet, seed=seed, certify=certify, norm=norm, resume=resume)
        main = rank_world()[0] == 0
    finally:
        shutdown()
    if main:
        dest = Path(out) if out is not None else run_dir_of(target)
        print("\n".join(summary(r) + [wrote([dest / f for f in eval_report_files(r)])]))
    return 0
