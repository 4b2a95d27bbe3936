"""Training objectives: each has ``loss(model, x, y, index) -> (loss, stats)`` and ``state_dict()``."""
from __future__ import annotations

from .base import Method
from .mma import MMA
from .pgd_at import PGDAT
from .standard import Standard

__all__ = ["Method", "Standard", "PGDAT", "MMA", "build_method"]


def build_method(cfg, num_examples: int, device) -> Method:
    """The objective a :class:`~maxmargin.config.Config` asks for."""
    if cfg.method == "standard":
        return Standard()
    if cfg.method == "pgd":
        return PGDAT(cfg.norm, cfg.eps, steps=cfg.attack_steps, ls_steps=cfg.pgdls_steps)
    if cfg.method == "mma":
        return MMA(cfg.norm, cfg.d_max, cfg.eps_min, cfg.attack_steps, num_examples,
                   clean_weight=cfg.clean_weight, search_steps=cfg.search_steps, eps_inc=cfg.eps_inc,
                   refine=cfg.refine, search=cfg.search, device=device)
    raise ValueError(f"unknown method {cfg.method!r}")
