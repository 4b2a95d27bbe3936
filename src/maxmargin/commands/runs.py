"""Run directories, shared by every command: find them, load what they hold, train or evaluate them.

A run directory holds ``config.toml``, ``metrics.csv``,
``checkpoints/{best,last}.pt`` and, once evaluated, ``eval.json``,
``report.md`` and plots. Commands accept a run directory or
a checkpoint file inside one.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from ..certify import certified_margin
from ..checkpoint import load_checkpoint, load_model
from ..config import Config
from ..distributed import barrier, init_distributed
from ..errors import UserError
from ..evaluate import EvalResult, plan_evaluation
from ..margin import margin_search
from ..norm_tables import default_eps_grid
from ..report import write_eval_report
from ..runlock import locks_output
from ..runs import load_data
from ..sharding import map_examples
from ..train import train
from .checks import check_certify, check_counts, check_eps, check_norm, check_protocol, check_split, check_transfer
from .partial_results import PartialResults, model_digest

# Each rank's generator starts apart from the others': attack noise differs per shard, as in training.
RANK_SEED_STRIDE = 1_000_003


def run_dir_of(path: Path) -> Path:
    """A run directory, or the run directory a checkpoint file belongs to (else its folder)."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return path.parent


def load_examples(cfg: Config, data_dir: str | None, device: torch.device, n: int | None,
                  split: str = "test") -> tuple[Tensor, Tensor]:
    """The first ``n`` (``None``: all) images and labels of a run's ``split`` ("test" or "val").

    Refuses an ``n`` beyond the split's size rather than evaluating fewer examples than asked for.
    """
    x, y = load_data(cfg, split=split, n=n if n is not None and n > 0 else None, device=device, data_dir=data_dir)
    if n is not None and n > x.shape[0]:
        raise UserError(f"--n {n}: the {split} split has {x.shape[0]} examples")
    return x, y


def load_sources(paths: Sequence[Path], device: torch.device,
                 arch: dict) -> tuple[list[nn.Module], list[str]]:
    """Transfer-attack source models and their names (their run directories').

    Each must take the evaluated model's inputs and predict its classes
    (``arch``: the evaluated checkpoint's), else its attacks mean nothing.
    """
    models, names = [], []
    for path in paths:
        model, _, ckpt = load_model(path, device)
        theirs = {k: ckpt["arch"].get(k) for k in ("in_channels", "image_size", "num_classes")}
        ours = {k: arch.get(k) for k in theirs}
        if theirs != ours:
            raise UserError(f"--transfer-from {path}: its model takes {theirs} but the evaluated one {ours}")
        models.append(model)
        names.append(run_dir_of(path).name)
    return models, names


def output_folder(target: Path, out: Path | None = None, **_: object) -> Path:
    """The folder an evaluation of ``target`` writes: ``out``, else the run directory."""
    return Path(out) if out is not None else run_dir_of(target)


def train_or_reuse(cfg: Config, out: Path, progress: bool) -> None:
    """Train ``cfg`` into ``out``, resume it if it stopped early, or keep it if it finished."""
    last = out / "checkpoints" / "last.pt"
    if last.is_file():
        if int(load_checkpoint(last)["step"]) >= cfg.steps:
            print(f"{cfg.name}: reusing the finished run in {out}")
            return
        train(cfg, out, resume=True, progress=progress)
    else:
        train(cfg, out, progress=progress)


@locks_output(output_folder)
def evaluate_run(target: Path, protocol: str = "quick", eps: Sequence[float] | None = None,
                 transfer_from: Sequence[Path] = (), out: Path | None = None, n: int | None = None,
                 batch_size: int = 500, device: str = "auto", data_dir: str | None = None, split: str = "test",
                 margins: bool | None = None, progress: bool = True, seed: int = 0,
                 certify: str | None = None, norm: str | None = None, resume: bool = False) -> EvalResult:
    """Evaluate a run's checkpoint and write ``eval.json``, ``report.md`` and the plots.

    ``eps``: the radii (default: the grid of the dataset and ``norm``);
    ``norm``: the threat model (default: the run's); ``margins``: also
    estimate margins and use them as one more attack (default: only for the
    paper protocol); ``certify`` (one of :data:`maxmargin.certify.METHODS`) adds certified
    accuracy at every ε. Under ``torchrun`` every rank attacks a shard of the
    examples; all ranks get the full result and rank 0 alone writes the files.
    Partial results are saved after every attacked batch; ``resume``
    continues from them (:mod:`~maxmargin.commands.partial_results`).
    """
    check_protocol(protocol)
    check_transfer(protocol, transfer_from)
    check_split(split)
    check_certify(certify)
    check_counts(n, batch_size)
    check_norm(norm)
    if eps is not None:
        check_eps(eps)
    info, dev = init_distributed(device)
    model, cfg, ckpt = load_model(target, dev)
    norm = norm or cfg.norm
    sources, names = load_sources(transfer_from, dev, ckpt["arch"])
    torch.manual_seed(seed + RANK_SEED_STRIDE * info.rank)
    x, y = load_examples(cfg, data_dir, dev, n, split)
    grid = list(eps) if eps is not None else default_eps_grid(cfg.dataset, norm)
    if not grid:
        raise UserError("--eps needs at least one value")
    use_margins = protocol == "paper" if margins is None else margins
    plan = plan_evaluation(model, tuple(x.shape[1:]), norm, grid, protocol, sources, batch_size,
                           margin_attack=use_margins, source_names=names)
    dest = Path(out) if out is not None else run_dir_of(target)
    if info.main:
        print(f"evaluating {x.shape[0]} examples × {len(grid)} radii × {len(plan.stages)} attacks "
              f"({protocol}, {norm}) on {dev}" + (f" × {info.world} processes" if info.enabled else ""), flush=True)
    partials = PartialResults(dest, info, {
        "checkpoint": model_digest(model), "protocol": protocol, "eps": grid, "n": int(x.shape[0]), "split": split,
        "seed": seed, "batch_size": batch_size, "norm": norm, "certify": certify, "margins": use_margins,
        "transfer_from": [model_digest(s) for s in sources]})
    saved = partials.start(resume, dev)
    shown = progress and info.main
    m = cert = None
    if saved is not None:
        m, cert = saved["margins"], saved["certified"]
    else:
        if use_margins:
            m = map_examples(partial(margin_search, model), x, y, norm=norm, eps_max=plan.margin_cap,
                             batch_size=batch_size)
        if certify is not None and max(grid) > 0:
            cert = map_examples(partial(certified_margin, model), x, y, norm=norm, method=certify,
                                eps_max=max(grid), progress=shown)
    stage, m = map_examples(plan.attack, x, y, m, progress=shown, resume=None if saved is None else saved["state"],
                            on_progress=partials.saver(m, cert))
    result = plan.result(x, y, stage, m, cert, certify if cert is not None else None)
    if info.main:
        write_eval_report(result, dest, f"Evaluation of {run_dir_of(target).name}",
                          {"checkpoint": str(target), "step": ckpt.get("step"), "split": split,
                           "transfer_from": [str(s) for s in transfer_from], "seed": seed, "processes": info.world})
    barrier()
    partials.discard()
    return result
