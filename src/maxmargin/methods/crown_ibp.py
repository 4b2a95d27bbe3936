"""CROWN-IBP training (Zhang et al. 2020): IBP's loss on a mix of CROWN-IBP and IBP margin bounds.

The margin lower bounds are ``β · crown_ibp + (1 − β) · ibp``: CROWN-IBP
bounds every intermediate layer by intervals and the margins by one CROWN
backward pass (linear relaxations of every ReLU and max-pool, concretized
over the ball); tighter than IBP early in training, when interval bounds
are loose. β goes from ``beta_start`` to ``beta_end`` over the same ramp as
ε and κ (the paper: 1 → 0, so the network ends trained on IBP bounds, which
the paper found generalizes better). The cost is one backward pass per
class-pair specification while β > 0.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..options import option
from .base import register
from .ibp import IBP, IBPOptions


@dataclass(frozen=True)
class CrownIBPOptions(IBPOptions):
    beta_start: float = option(1.0, "weight of the CROWN-IBP bound at the start of the ramp (IBP's: 1 - it)",
                               min=0)
    beta_end: float = option(0.0, "weight of the CROWN-IBP bound at the end of the ramp", min=0)

    def check(self) -> None:
        super().check()
        for name in ("beta_start", "beta_end"):
            if getattr(self, name) > 1:
                raise UserError(f"option {name!r} must be in [0, 1], got {getattr(self, name)}")


@register("crown-ibp")
class CrownIBP(IBP):
    """κ·CE(clean) + (1 − κ)·CE(worst-case logits from β·CROWN-IBP + (1 − β)·IBP margin bounds)."""

    Options = CrownIBPOptions

    def __init__(self, norm: str, eps: float = 0.3, warmup_steps: int = 0, ramp_steps: int = 0,
                 kappa_end: float = 0.5, beta_start: float = 1.0, beta_end: float = 0.0) -> None:
        super().__init__(norm, eps, warmup_steps, ramp_steps, kappa_end)
        CrownIBPOptions(eps, warmup_steps, ramp_steps, kappa_end, beta_start, beta_end)
        self.beta_start, self.beta_end = beta_start, beta_end

    def beta(self, progress: float) -> float:
        return self.beta_start + progress * (self.beta_end - self.beta_start)
