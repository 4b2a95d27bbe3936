"""What a run wrote, loaded back: its model, its config, and the data it was trained and evaluated on.

    from maxmargin import load_model, load_data

    model, cfg, checkpoint = load_model("runs/quick-mma")      # best.pt, in eval mode
    x, y = load_data(cfg, split="test", n=500)                 # float images in [0, 1], int64 labels
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import load_model
from .config import Config
from .data import load_dataset
from .errors import UserError

SPLITS = ("train", "val", "test")


def load_data(cfg: Config, split: str = "test", n: int | None = None, device: torch.device | str = "cpu",
              data_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` examples (all if ``None``) of a split of the run's dataset, as float images and labels.

    ``split``: ``"test"``, ``"val"`` (the first ``val_size`` training images,
    held out) or ``"train"`` (the rest). ``data_dir`` overrides the config's.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n is not None and n < 1:
        raise UserError(f"n must be >= 1 (or None for the whole split), got {n}")
    ds = load_dataset(cfg.dataset, data_dir if data_dir is not None else cfg.data_dir, cfg.val_size, device)
    part = {"train": ds.train, "val": ds.val, "test": ds.test}[split]
    count = len(part) if n is None else min(n, len(part))
    return part.images(slice(0, count)), part.y[:count]


__all__ = ["load_model", "load_data"]
