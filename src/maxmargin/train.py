"""The training loop: steps, LR schedule, evaluation cadence, best-by-margin, resume, clean stops."""
from __future__ import annotations

import csv
import io
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .attacks import pgd
from .attacks.anpgd import anpgd_search
from .attacks.graphs import cuda_graphs
from .checkpoint import arch_of, load_checkpoint, load_weights, model_from_arch, save_checkpoint
from .config import Config, check, to_toml
from .data import BatchStream, Dataset, Split, augment, load_dataset
from .distributed import all_gather_objects, all_reduce, barrier, init_distributed, unwrap
from .errors import UserError
from .files import write_text_atomic
from .methods import build_method
from .methods.base import Method
from .models.fast_paths import apply_fast_paths
from .runlock import RunLock, is_main_process
from .stopping import Stopped, StopRequest, stop_on_signals

METRICS = ["step", "lr", "loss", "train_acc", "val_acc", "val_pgd_acc", "val_margin", "mean_eps", "seconds"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(cfg: Config, step: int) -> float:
    lr = cfg.lr
    for milestone, value in zip(cfg.lr_milestones, cfg.lr_values):
        if step >= milestone:
            lr = value
    return lr


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class Validation:
    acc: float
    pgd_acc: float
    margin: float


def check_world(cfg: Config, world: int) -> None:
    """Every process takes an equal share of the global batch."""
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes "
                        f"(torchrun --nproc_per_node); use --set batch_size={cfg.batch_size - cfg.batch_size % world}")


def validate(model: nn.Module, cfg: Config, split: Split, rank: int = 0, world: int = 1) -> Validation:
    """Clean accuracy, PGD accuracy and average AN-PGD margin (misclassified count 0) on ``split``.

    The margin: PGD on ``margin_attack_loss`` at ``margin_eps_init``, then a
    bisection on the logit margin up to ``margin_eps_max`` along its direction
    (the MMA presets follow the official trainer: SLM, the validation ε,
    1.05·d_max).

    With several ranks each takes every ``world``-th example and the sums are reduced.
    """
    n = len(split) if cfg.eval_size <= 0 else min(cfg.eval_size, len(split))
    mine = torch.arange(rank, n, world, device=split.y.device)
    correct = robust = 0
    margin_sum = 0.0
    was_training = model.training
    model.eval()
    margin_start = cfg.margin_eps_max / 2 if cfg.margin_eps_init is None else min(cfg.margin_eps_init,
                                                                                   cfg.margin_eps_max)
    for start in range(0, mine.numel(), cfg.eval_batch_size):
        sl = mine[start:start + cfg.eval_batch_size]
        x, y = split.images(sl), split.y[sl]
        with torch.no_grad():
            logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        x_adv = pgd(model, x, y, norm=cfg.norm, eps=cfg.val_pgd_eps, steps=cfg.val_pgd_steps,
                    step_size=cfg.val_pgd_step)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == y).sum())
        r = anpgd_search(model, x, y, cfg.norm, eps_init=margin_start, eps_max=cfg.margin_eps_max,
                         steps=cfg.margin_steps, search_steps=10, criterion="lm", clean_logits=logits,
                         attack_loss=cfg.margin_attack_loss)
        margin_sum += float(torch.where(r.found, r.eps, torch.full_like(r.eps, cfg.margin_eps_max)).sum())
    model.train(was_training)
    sums = all_reduce(torch.tensor([correct, robust, margin_sum], dtype=torch.float64, device=split.y.device))
    return Validation(float(sums[0]) / n, float(sums[1]) / n, float(sums[2]) / n)


class Metrics:
    """``metrics.csv``, one row per evaluation; on resume rows past the checkpoint are dropped.

    Each row rewrites the whole file atomically (a few hundred rows at most):
    an append that fails halfway on a full disk would leave a torn last row.
    """

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            try:
                with path.open(newline="") as f:
                    self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            except (KeyError, TypeError, ValueError, csv.Error, UnicodeDecodeError) as e:
                raise UserError(f"{path} is damaged ({e}); delete it to continue without the old rows") from None
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({k: row.get(k, "") for k in METRICS})
        self._write()

    def _write(self) -> None:
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, METRICS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.rows)
        write_text_atomic(self.path, text.getvalue())


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def elastic_restart() -> int:
    """How often torchrun (``--max-restarts``) has restarted this job's workers; 0 outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def prepare_run(cfg: Config, out: Path, resume: bool) -> dict[str, Any] | None:
    """Check the run directory before anything is loaded; returns the checkpoint to resume from.

    Workers that torchrun restarted after a failure resume from ``last.pt`` without ``--resume``:
    they run the command line of the first attempt, which started the run.
    """
    last = out / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise UserError(f"--resume: {last} does not exist; start the run without --resume")
        return load_checkpoint(last)
    if last.is_file():
        if elastic_restart() > 0:
            return load_checkpoint(last)
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return None


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of ``rank`` at ``step`` with several processes: attack noise differs per rank, and a
    resumed or restarted run draws the same noise as an uninterrupted one (only rank 0's RNG state is saved)."""
    return seed * 1_000_003 + rank * 7_919 + step


def _method_state(method: Method, ckpt: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """The method state this rank resumes from: its own if the checkpoint kept each rank's (a stop between
    evaluations, same world size), else the merged one."""
    ranks = ckpt.get("method_ranks")
    if ranks is not None and int(ckpt.get("world_size", 1)) == world and len(ranks) == world:
        return ranks[rank]
    return ckpt["method"]


def _stop_signal(stop: StopRequest, world: int, device: torch.device) -> int:
    """The signal that stops every rank at this step (0: go on); the ranks agree, so they stop together."""
    if world == 1:
        return stop.signum
    flag = all_reduce(torch.tensor([stop.signum], dtype=torch.int64, device=device), "max")
    return int(flag.item())


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
          dataset: Dataset | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says into the run directory ``out``; returns the last metrics row and the best margin.

    Under ``torchrun`` every rank runs this; rank 0 alone writes files and shows progress.

    On SIGTERM or SIGINT the current step finishes, ``checkpoints/last.pt`` is written and
    :class:`~maxmargin.stopping.Stopped` is raised (the CLI exits 128 + the signal number); the
    signal handlers in place before the call are back when it returns or raises. A folder another
    live process is writing is refused (:class:`~maxmargin.runlock.RunLock`).
    """
    cfg = check(cfg)
    out = Path(out)
    with RunLock(out, enabled=is_main_process()) as lock:
        return _train(cfg, out, resume, progress, dataset, lock)


def _train(cfg: Config, out: Path, resume: bool, progress: bool, dataset: Dataset | None,
           lock: RunLock) -> dict[str, Any]:
    ckpt = prepare_run(cfg, out, resume)
    dist_info, device = init_distributed(cfg.device)
    rank, world = dist_info.rank, dist_info.world
    check_world(cfg, world)
    seed_everything(cfg.seed)
    ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, cfg.val_size, device)
    arch = arch_of(cfg, ds.shape, ds.num_classes)
    core = model_from_arch(arch).to(device)
    optimizer = make_optimizer(cfg, core)
    method = build_method(cfg, len(ds.train), device)
    start, best, elapsed = 0, float("-inf"), 0.0
    if ckpt is not None:
        load_weights(core, ckpt, out / "checkpoints" / "last.pt", expected_arch=arch)
        optimizer.load_state_dict(ckpt["optimizer"])
        method.load_state_dict(_method_state(method, ckpt, rank, world))
        start, best = int(ckpt["step"]), float(ckpt["best_margin"])
        # the seconds column goes on across resumes (older checkpoints did not keep it)
        elapsed = float(ckpt.get("seconds", 0.0))
        _set_rng_state(ckpt["rng"])
        if dist_info.main and not resume:
            print(f"torchrun restart {elastic_restart()}: resuming {out} from step {start}", flush=True)
    model = apply_fast_paths(core, cfg.amp, cfg.channels_last, cfg.compile, device,
                             notice=print if dist_info.main else (lambda _: None), cuda_graphs=cfg.cuda_graphs)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if dist_info.main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        lock.acquire()   # a new folder exists only now
        write_text_atomic(out / "config.toml", to_toml(cfg))
        metrics = Metrics(out / "metrics.csv", start if ckpt is not None else None)
    stream = BatchStream(len(ds.train), cfg.batch_size, cfg.seed, device)
    config_dict = cfg.to_dict()
    last_row: dict[str, Any] = {}
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and dist_info.main), desc=cfg.name,
               dynamic_ncols=True)
    t0 = time.perf_counter() - elapsed

    def save_last(done: int, method_ranks: list[Any] | None = None) -> None:
        extra = {} if method_ranks is None else {"method_ranks": method_ranks}
        save_checkpoint(out / "checkpoints" / "last.pt", {
            "arch": arch, "config": config_dict, "step": done, "model": core.state_dict(),
            "optimizer": optimizer.state_dict(), "method": method.state_dict(), "best_margin": best,
            "rng": _rng_state(), "world_size": world, "seconds": time.perf_counter() - t0, **extra})

    # CUDA graphs for the attacks of this run only, so that a later evaluation in the same process runs eagerly
    with stop_on_signals() as stop, cuda_graphs(cfg.cuda_graphs and device.type == "cuda"):
        model.train()
        for step in range(start, cfg.steps):
            if world > 1:
                torch.manual_seed(rank_seed(cfg.seed, rank, step))
            idx = stream.indices(step, rank, world)
            x, y = ds.train.images(idx), ds.train.y[idx]
            if cfg.augment:
                g = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + step)
                x = augment(x, g)
            lr = lr_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            method.step = step
            loss, stats = method.loss(model, x, y, idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
            optimizer.step()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)

            done = step + 1
            evaluated = done % cfg.eval_every == 0 or done == cfg.steps
            if evaluated:
                method.sync()
                val = validate(unwrap(model), cfg, ds.val, rank, world)
                last_row = {"step": done, "lr": lr, "loss": stats["loss"],
                            "train_acc": stats.get("acc", stats.get("adv_acc", "")), "val_acc": val.acc,
                            "val_pgd_acc": val.pgd_acc, "val_margin": val.margin, "mean_eps": "",
                            **method.metrics(), "seconds": round(time.perf_counter() - t0, 2)}
                improved = val.margin > best
                best = max(best, val.margin)
                if dist_info.main:
                    metrics.append(last_row)
                    bar.write(f"step {done}: val acc {val.acc:.4f}, PGD acc {val.pgd_acc:.4f}, "
                              f"avg margin {val.margin:.4f}")
                    if improved:
                        save_checkpoint(out / "checkpoints" / "best.pt", {
                            "arch": arch, "config": config_dict, "step": done, "model": core.state_dict(),
                            "val_margin": val.margin})
                    save_last(done)
                barrier()
            signum = _stop_signal(stop, world, device) if done < cfg.steps else 0
            if signum:
                bar.close()
                if not evaluated:
                    # each rank's own method state too: merging it here, where an uninterrupted run does
                    # not, would change what the ranks see next; the merged one serves other world sizes
                    ranks = all_gather_objects(method.state_dict()) if world > 1 else None
                    method.sync()
                    if dist_info.main:
                        save_last(done, ranks)
                    barrier()
                raise Stopped(signum, done, out, world)
    bar.close()
    return {"last": last_row, "best_margin": best, "out": str(out)}
