"""Training objectives: each has ``loss(model, x, y, index) -> (loss, stats)`` and ``state_dict()``."""
from __future__ import annotations

from .amm import AMM
from .base import Method
from .mma import MMA
from .pgd_at import PGDAT
from .standard import Standard
from .trades import TRADES

__all__ = ["Method", "Standard", "PGDAT", "MMA", "TRADES", "AMM", "build_method"]


def build_method(cfg, num_examples: int, device) -> Method:
    """The objective a :class:`~maxmargin.config.Config` asks for."""
    if cfg.method == "standard":
        return Standard()
    if cfg.method == "pgd":
        return PGDAT(cfg.norm, cfg.eps, steps=cfg.attack_steps, ls_steps=cfg.pgdls_steps, attack_loss=cfg.attack_loss)
    if cfg.method == "mma":
        return MMA(cfg.norm, cfg.d_max, cfg.eps_min, cfg.attack_steps, num_examples,
                   clean_weight=cfg.clean_weight, search_steps=cfg.search_steps, eps_inc=cfg.eps_inc,
                   refine=cfg.refine, search=cfg.search, inner=cfg.inner, ddn_gamma=cfg.ddn_gamma, device=device)
    if cfg.method == "trades":
        return TRADES(cfg.norm, cfg.eps, cfg.attack_steps, beta=cfg.beta, step_size=cfg.attack_step)
    if cfg.method == "amm":
        return AMM(cfg.amm_lam, cfg.amm_c, cfg.amm_d, top_k=cfg.amm_top_k, iters=cfg.amm_iters,
                   overshoot=cfg.amm_overshoot, aggregation=cfg.amm_aggregation, grad_eps=cfg.amm_grad_eps)
    raise ValueError(f"unknown method {cfg.method!r}")
