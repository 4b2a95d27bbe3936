"""The training loop: steps, LR schedule, evaluation cadence, best-by-margin, resume."""
from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import pgd
from .attacks.anpgd import anpgd_search
from .checkpoint import arch_of, load_checkpoint, load_weights, model_from_arch, save_checkpoint
from .config import Config, check, to_toml, write_atomic
from .data import BatchStream, Dataset, Split, augment, load_dataset
from .errors import UserError
from .methods import build_method

METRICS = ["step", "lr", "loss", "train_acc", "val_acc", "val_pgd_acc", "val_margin", "mean_eps", "seconds"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


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


def validate(model: nn.Module, cfg: Config, split: Split) -> Validation:
    """Clean accuracy, PGD accuracy and average AN-PGD margin (misclassified count 0) on ``split``."""
    n = len(split) if cfg.eval_size <= 0 else min(cfg.eval_size, len(split))
    correct = robust = 0
    margin_sum = 0.0
    was_training = model.training
    model.eval()
    for start in range(0, n, cfg.eval_batch_size):
        sl = slice(start, min(start + cfg.eval_batch_size, n))
        x, y = split.images(sl), split.y[sl]
        with torch.no_grad():
            logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        x_adv = pgd(model, x, y, norm=cfg.norm, eps=cfg.val_pgd_eps, steps=cfg.val_pgd_steps,
                    step_size=cfg.val_pgd_step)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == y).sum())
        r = anpgd_search(model, x, y, cfg.norm, eps_init=cfg.margin_eps_max / 2, eps_max=cfg.margin_eps_max,
                         steps=cfg.margin_steps, search_steps=10, criterion="lm", clean_logits=logits)
        margin_sum += float(torch.where(r.found, r.eps, torch.full_like(r.eps, cfg.margin_eps_max)).sum())
    model.train(was_training)
    return Validation(correct / n, robust / n, margin_sum / n)


class Metrics:
    """``metrics.csv``, one row per evaluation; on resume rows past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, METRICS)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, METRICS).writerow({k: row.get(k, "") for k in METRICS})


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def prepare_run(cfg: Config, out: Path, resume: bool) -> dict[str, Any] | None:
    """Check the run directory before anything is loaded; returns the checkpoint to resume from."""
    last = out / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise UserError(f"--resume: {last} does not exist; start the run without --resume")
        return load_checkpoint(last)
    if last.is_file():
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return None


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
          dataset: Dataset | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says into the run directory ``out``; returns the last metrics row and the best margin."""
    cfg = check(cfg)
    out = Path(out)
    ckpt = prepare_run(cfg, out, resume)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    ds = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_dir, cfg.val_size, device)
    arch = arch_of(cfg, ds.shape, ds.num_classes)
    model = model_from_arch(arch).to(device)
    optimizer = make_optimizer(cfg, model)
    method = build_method(cfg, len(ds.train), device)
    start, best = 0, float("-inf")
    if ckpt is not None:
        load_weights(model, ckpt, out / "checkpoints" / "last.pt", expected_arch=arch)
        optimizer.load_state_dict(ckpt["optimizer"])
        method.load_state_dict(ckpt["method"])
        start, best = int(ckpt["step"]), float(ckpt["best_margin"])
        _set_rng_state(ckpt["rng"])

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.toml", to_toml(cfg))
    metrics = Metrics(out / "metrics.csv", start if ckpt is not None else None)
    stream = BatchStream(len(ds.train), cfg.batch_size, cfg.seed, device)
    config_dict = cfg.to_dict()
    last_row: dict[str, Any] = {}
    bar = tqdm(total=cfg.steps, initial=start, disable=not progress, desc=cfg.name, dynamic_ncols=True)
    t0 = time.perf_counter()
    model.train()
    for step in range(start, cfg.steps):
        idx = stream.indices(step)
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
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items()}, refresh=False)

        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            val = validate(model, cfg, ds.val)
            mean_eps = float(method.eps.mean()) if hasattr(method, "eps") and isinstance(method.eps, Tensor) else ""
            last_row = {"step": done, "lr": lr, "loss": stats["loss"],
                        "train_acc": stats.get("acc", stats.get("adv_acc", "")), "val_acc": val.acc,
                        "val_pgd_acc": val.pgd_acc, "val_margin": val.margin, "mean_eps": mean_eps,
                        "seconds": round(time.perf_counter() - t0, 2)}
            metrics.append(last_row)
            bar.write(f"step {done}: val acc {val.acc:.4f}, PGD acc {val.pgd_acc:.4f}, "
                      f"avg margin {val.margin:.4f}")
            payload = {"arch": arch, "config": config_dict, "step": done, "model": model.state_dict()}
            if val.margin > best:
                best = val.margin
                save_checkpoint(out / "checkpoints" / "best.pt", {**payload, "val_margin": val.margin})
            save_checkpoint(out / "checkpoints" / "last.pt", {
                **payload, "optimizer": optimizer.state_dict(), "method": method.state_dict(),
                "best_margin": best, "rng": _rng_state()})
    bar.close()
    return {"last": last_row, "best_margin": best, "out": str(out)}
