"""Reports: ``eval.json``, ``report.md`` and PNG plots for one run, and comparisons of several."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# The Figure API draws without pyplot's global state: importing this module leaves the caller's
# matplotlib backend alone (a notebook keeps its inline one) and no figure lingers in a registry.
from matplotlib.figure import Figure
from torch import Tensor

from .errors import UserError
from .evaluate import EvalResult, median
from .files import atomic_path, read_json_sealed, write_json_sealed, write_text_atomic

# eval.json's "format": a maxmargin that reads another refuses the file instead of misreading it
EVAL_FORMAT = "maxmargin-eval-1"


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def margin_stats(m: Tensor) -> dict[str, Any]:
    """Count, mean, median, share of zeros (misclassified) and quantiles of per-example margins."""
    m = m.float().cpu()
    return {"n": int(m.numel()), "mean": float(m.mean()), "median": median(m),
            "zero_fraction": float((m == 0).float().mean()),
            "quantiles": {str(q): float(torch.quantile(m, q)) for q in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)}}


def plot_margins(m: Tensor, out: Path, norm: str, eps_max: float | None = None,
                 attack_curve: dict[float, float] | None = None) -> list[Path]:
    """Histogram and CDF of the margins; the attack curve, if given, beside the CDF prediction."""
    m = m.float().cpu()
    fig, ax = _figure(5, 3.2)
    ax.hist(m.numpy(), bins=40, color="#4477aa")
    ax.set_xlabel(f"margin ({norm})")
    ax.set_ylabel("examples")
    ax.set_title("margin histogram (0 = misclassified)")
    _save(fig, out / "margin_hist.png")
    xs = torch.linspace(0, float(m.max()) if eps_max is None else eps_max, 200)
    pred = [(m > v).float().mean().item() for v in xs]
    fig, ax = _figure(5, 3.2)
    ax.plot(xs.numpy(), pred, label="fraction with margin > ε (predicted robust accuracy)")
    if attack_curve:
        e = sorted(attack_curve)
        ax.plot(e, [attack_curve[v] for v in e], "o-", label="robust accuracy under attack")
    ax.set_xlabel(f"ε ({norm})")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    _save(fig, out / "margin_cdf.png")
    return [out / "margin_hist.png", out / "margin_cdf.png"]


def plot_sandwich(lower: Tensor, upper: Tensor, out: Path, norm: str, method: str) -> Path:
    """Every example's margin between its certified lower bound and its attack upper bound."""
    upper, lower = upper.float().cpu(), lower.float().cpu()
    order = upper.argsort()
    i = torch.arange(len(order)).numpy()
    fig, ax = _figure(5.5, 3.4)
    ax.fill_between(i, lower[order].numpy(), upper[order].numpy(), color="#bbccee", label="true margin lies here")
    ax.plot(i, upper[order].numpy(), color="#4477aa", linewidth=1, label="upper bound (attack)")
    ax.plot(i, lower[order].numpy(), color="#ee6677", linewidth=1, label=f"lower bound (certified, {method})")
    ax.set_xlabel("examples, sorted by upper bound")
    ax.set_ylabel(f"margin ({norm})")
    ax.legend(fontsize=7)
    ax.set_title("margins from both sides")
    path = out / "margin_sandwich.png"
    _save(fig, path)
    return path


def plot_robust_accuracy(result: EvalResult, out: Path) -> Path:
    """Robust accuracy against ε after each attack of the sequence (the paper's Figure 3 style)."""
    fig, ax = _figure(5.5, 3.6)
    for name, curve in result.by_attack.items():
        e = sorted(curve)
        ax.plot(e, [curve[v] for v in e], marker=".", linewidth=1, label=f"after {name}")
    e = sorted(result.robust_accuracy)
    ax.plot(e, [result.robust_accuracy[v] for v in e], "k-o", linewidth=2, label="all attacks (reported)")
    cdf = result.margin_cdf_accuracy()
    if cdf:
        ax.plot(e, [cdf[v] for v in e], "--", color="gray", label="margin CDF prediction")
    cert = result.certified_accuracy()
    if cert:
        ax.plot(e, [cert[v] for v in e], "s:", color="#ee6677", label=f"certified ({result.certify_method})")
    ax.set_xlabel(f"ε ({result.norm})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"protocol: {result.protocol}")
    path = out / "robust_accuracy.png"
    _save(fig, path)
    return path


def eval_markdown(result: EvalResult, title: str) -> str:
    """``report.md`` of one evaluation: the accuracies, the attack table and the masking checks."""
    lines = [f"# {title}", "", f"Protocol **{result.protocol}**, norm {result.norm}, "
             f"{result.robust.shape[1]} examples. An example is robust at ε only if every attack failed.", "",
             f"- clean accuracy: **{result.clean_accuracy:.4f}**",
             f"- average robust accuracy over ε = {', '.join(f'{e:g}' for e in result.averaged)}: "
             f"**{result.average_robust_accuracy:.4f}**",
             f"- AvgAcc (the MMA paper's: mean of clean and those robust accuracies): **{result.avg_acc:.4f}**"]
    left_out = [e for e in result.eps if e not in result.averaged]
    if left_out:
        lines.append(f"- ε = {', '.join(f'{e:g}' for e in left_out)}: a gradient-masking check (every input can be "
                     "moved to the middle of the box there), not in the averages")
    lines.append("")
    cdf = result.margin_cdf_accuracy()
    cert = result.certified_accuracy()
    head = "| ε | robust accuracy |" + (" margin CDF |" if cdf else "") + (
        f" certified ({result.certify_method}) |" if cert else "")
    lines += [head, "|---|---|" + ("---|" if cdf else "") + ("---|" if cert else "")]
    for e in result.eps:
        lines.append(f"| {e:.4g} | {result.robust_accuracy[e]:.4f} |" + (f" {cdf[e]:.4f} |" if cdf else "")
                     + (f" {cert[e]:.4f} |" if cert else ""))
    if cert:
        lines += ["", "Certified accuracy: examples whose certified radius (a proven lower bound on the margin) "
                  "is at least ε; no attack can break them. The true robust accuracy lies between the two columns."]
    lines += ["", "## Attacks (in the order they ran; each saw only the survivors)", "",
              "| attack | ε | steps | restarts | source | newly broken | accuracy after |",
              "|---|---|---|---|---|---|---|"]
    for r in result.attacks:
        lines.append(f"| {r['attack']} | {r['eps']:.4g} | {r['steps']} | {r['restarts']} | {r['source']} | "
                     f"{r['newly_broken']} | {r['accuracy_after']:.4f} |")
    lines += ["", "## Gradient-masking checks", ""]
    lines += [f"- ⚠ {f}" for f in result.flags] if result.flags else ["- none raised"]
    lines += ["", "![robust accuracy](robust_accuracy.png)"]
    if result.margins is not None:
        lines += ["", "## Margins", "", f"mean {float(result.margins.mean()):.4f}, median "
                  f"{median(result.margins):.4f}", "", "![margin histogram](margin_hist.png)",
                  "![margin CDF](margin_cdf.png)"]
    return "\n".join(lines) + "\n"


def eval_report_files(result: EvalResult) -> list[str]:
    """The names of the files :func:`write_eval_report` writes for ``result``."""
    return ["eval.json", "report.md", "robust_accuracy.png"] + (
        ["margin_hist.png", "margin_cdf.png"] if result.margins is not None else [])


def write_eval_report(result: EvalResult, out: Path, title: str, extra: dict[str, Any] | None = None) -> None:
    """``eval.json`` (``extra`` first, then the result), ``report.md`` and the plots (:func:`eval_report_files`).

    ``eval.json`` opens with ``"format"`` and ends with its ``"sha256"``
    (:func:`maxmargin.files.write_json_sealed`); :func:`load_eval` checks both.
    """
    out.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **(extra or {}), **result.to_dict()}
    write_json_sealed(out / "eval.json", payload, EVAL_FORMAT)
    plot_robust_accuracy(result, out)
    if result.margins is not None:
        plot_margins(result.margins, out, result.norm, max(result.eps) * 1.5, result.robust_accuracy)
    write_text_atomic(out / "report.md", eval_markdown(result, title))


# What compare_runs reads from every eval.json; a file without them is not one maxmargin wrote.
_EVAL_KEYS = ("eps", "norm", "protocol", "clean_accuracy", "robust_accuracy", "average_robust_accuracy", "flags")


def load_eval(path: Path, fix: str = "re-run `maxmargin eval`") -> dict[str, Any]:
    """An ``eval.json``, its checksum and format checked (see :func:`maxmargin.files.read_json_sealed`)."""
    return read_json_sealed(path, EVAL_FORMAT, fix, _EVAL_KEYS, "an evaluation")


def _load_eval(run: Path) -> dict[str, Any]:
    f = run / "eval.json"
    if not f.is_file():
        raise UserError(f"{f} is missing; run `maxmargin eval {run}` first")
    return load_eval(f, f"re-run `maxmargin eval {run}`")


def compare_runs(run_dirs: Sequence[Path], out: Path) -> str:
    """One table and one plot of robust accuracy vs ε over several evaluated runs."""
    evals = [(Path(d).name, _load_eval(Path(d))) for d in run_dirs]
    grid = sorted({float(e) for _, ev in evals for e in ev["eps"]})
    head = ("| run | norm | protocol | clean | " + " | ".join(f"ε={e:.4g}" for e in grid) +
            " | avg | AvgAcc | avg margin | flags |")
    lines = [head, "|" + "---|" * (len(grid) + 8)]
    fig, ax = _figure(5.5, 3.6)
    for name, ev in evals:
        ra = {float(k): v for k, v in ev["robust_accuracy"].items()}
        cells = [f"{ra[e]:.3f}" if e in ra else "–" for e in grid]
        margin = f"{ev['margin']['mean']:.3f}" if "margin" in ev else "–"
        lines.append(f"| {name} | {ev['norm']} | {ev['protocol']} | {ev['clean_accuracy']:.3f} | " + " | ".join(cells) +
                     f" | {ev['average_robust_accuracy']:.3f} | {ev.get('avg_acc', float('nan')):.3f} | {margin} | "
                     f"{len(ev['flags'])} |")
        e = sorted(ra)
        (line,) = ax.plot(e, [ra[v] for v in e], "o-", label=f"{name} ({ev['norm']})")
        if "certified" in ev:
            ca = {float(k): v for k, v in ev["certified"]["accuracy"].items()}
            cells = [f"{ca[g]:.3f}" if g in ca else "–" for g in grid]
            kept = [float(e) for e in ev.get("averaged_eps", list(ca)) if float(e) in ca]
            avg = sum(ca[e] for e in kept) / max(len(kept), 1)
            cmargin = f"{ev['certified']['mean']:.3f}"
            lines.append(f"| {name} · certified | {ev['norm']} | {ev['certified']['method']} | – | " + " | ".join(cells)
                         + f" | {avg:.3f} | – | {cmargin} | – |")
            c = sorted(ca)
            ax.plot(c, [ca[v] for v in c], "s:", color=line.get_color(), label=f"{name} certified")
    ax.set_xlabel("ε")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    out.mkdir(parents=True, exist_ok=True)
    _save(fig, out / "compare.png")
    note = ("\n\nRows marked *certified* are proven lower bounds (certified accuracy; mean certified radius in "
            "the margin column); the others are attack results (upper bounds).") if any(
        "certified" in ev for _, ev in evals) else ""
    text = "# Comparison\n\n" + "\n".join(lines) + note + "\n\n![robust accuracy](compare.png)\n"
    write_text_atomic(out / "compare.md", text)
    return "\n".join(lines)
