"""IBP training (Gowal et al. 2018): cross-entropy of the worst-case logits from interval bounds.

``L = κ · CE(f(x), y) + (1 − κ) · CE(z, y)`` with ``z_y = 0`` and
``z_j = −lower(f_y − f_j)`` over the ε-ball, the margin bounds with the
specification folded into the last linear layer (as CROWN-IBP computes IBP;
tighter than subtracting the logits' intervals). After ``warmup_steps`` of
clean training, ε grows linearly from 0 to ``eps`` and κ falls from 1 to
``kappa_end`` over ``ramp_steps``. A network trained this way has interval
bounds tight enough to certify (``maxmargin eval --certify ibp``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import unwrap
from ..errors import UserError
from ..options import Options, option
from .base import Method, ramped_eps, register
from .bound_losses import Chain, chain_of, margin_bounds, worst_logits


@dataclass(frozen=True)
class IBPOptions(Options):
    eps: float = option(0.3, "training radius, reached at the end of the ramp (papers train above the "
                             "radius they certify)", min=0)
    warmup_steps: int = option(0, "clean training steps (eps 0, kappa 1) before the ramp", min=0)
    ramp_steps: int = option(0, "eps grows 0 -> eps and kappa falls 1 -> kappa_end over this many steps "
                                "after the warm-up (0 = at once)", min=0)
    kappa_end: float = option(0.5, "weight of the clean cross-entropy after the ramp (the bound's: 1 - it)",
                              min=0)

    def check(self) -> None:
        if self.kappa_end > 1:
            raise UserError(f"option 'kappa_end' must be in [0, 1], got {self.kappa_end}")


@register("ibp")
class IBP(Method):
    """κ·CE(clean) + (1 − κ)·CE(worst-case logits from interval bounds at the ramped ε)."""

    Options = IBPOptions

    def __init__(self, norm: str, eps: float = 0.3, warmup_steps: int = 0, ramp_steps: int = 0,
                 kappa_end: float = 0.5) -> None:
        super().__init__()
        IBPOptions(eps, warmup_steps, ramp_steps, kappa_end)    # the checks, in one place
        self.norm, self.eps, self.warmup_steps, self.ramp_steps = norm, eps, warmup_steps, ramp_steps
        self.kappa_end = kappa_end
        self._chains: dict[int, Chain] = {}

    def progress(self) -> float:
        """How far the ramp is at this step: 0 during the warm-up, 1 after the ramp."""
        if self.step < self.warmup_steps:
            return 0.0
        return ramped_eps(1.0, self.step - self.warmup_steps, self.ramp_steps)

    def beta(self, progress: float) -> float:
        """Weight of the CROWN-IBP bound in the mix (IBP alone: 0)."""
        return 0.0

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        t = self.progress()
        eps, kappa = self.eps * t, 1.0 - t * (1.0 - self.kappa_end)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        stats: dict[str, Any] = {"acc": float((logits.argmax(1) == y).float().mean()), "eps": eps,
                                 "kappa": kappa}
        if eps > 0 and kappa < 1:
            chain = chain_of(unwrap(model), x, self._chains)
            beta = self.beta(t)
            low = margin_bounds(chain, x, y, eps, self.norm, beta)
            loss = kappa * loss + (1 - kappa) * F.cross_entropy(worst_logits(low, y), y)
            stats["cert_acc"] = float((low.detach() > 0).all(1).float().mean())
            if beta > 0:
                stats["beta"] = beta
        stats["loss"] = float(loss.detach())
        return loss, stats

    def to(self, device: torch.device | str) -> IBP:
        self._chains.clear()        # a moved model is traced again
        return self
