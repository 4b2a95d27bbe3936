"""Certified MMA: MMA's per-example adaptive radius, driven by the certified margin instead of an attack's.

MMA trains each correctly classified example at its own margin, found by an
attack and remembered between visits. Here the margin is the *certified*
one: a bisection on the bound (IBP, or CROWN-IBP with ``bound``) finds the
largest radius the current network provably classifies each example at,
warm-started from the radius remembered at its last visit. The example is
then trained on the bound loss (the cross-entropy of the worst-case logits,
as :mod:`.ibp`) at that radius grown by ``grow``, so that what grows is the
certified margin itself; examples whose certified margin reached ``d_max``
drop out of that term, as MMA's hinge drops them. There is no ε ramp: a
fresh network certifies nothing, so every radius starts at ``grow`` and
rises only as far as the network's proofs do.

``L = c·CE_mean(clean) + (1 − c)·[Σ_{correct, m_i < d_max} CE(z(m_i + grow)) + Σ_{wrong} CE(clean)] / B``
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import unwrap
from ..errors import UserError
from ..options import Options, option
from .base import Method, register
from .bound_losses import Chain, chain_of, margin_bounds, worst_logits
from .mma import MMA


@dataclass(frozen=True)
class CertMMAOptions(Options):
    d_max: float = option(0.4, "largest certified margin trained for (MMA's hinge)", positive=True)
    grow: float = option(0.05, "each example trains at its certified margin plus this", positive=True)
    clean_weight: float = option(0.5, "weight of the clean cross-entropy (the bound term's: 1 - it)", min=0)
    search_steps: int = option(6, "bisection steps on the bound per example and training step", positive=True)
    bound: str = option("ibp", "the bound searched and trained: ibp or crown-ibp (beta 1)",
                        choices=("ibp", "crown-ibp"))

    def check(self) -> None:
        if self.clean_weight > 1:
            raise UserError(f"option 'clean_weight' must be in [0, 1], got {self.clean_weight}")


@register("cert-mma")
class CertMMA(MMA):
    """MMA's loss with the attack's margin replaced by the certified one (memory, sync and state as MMA's)."""

    Options = CertMMAOptions    # type: ignore[assignment]  # its own options; MMA's only share the memory
    legacy_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, norm: str, num_examples: int, d_max: float = 0.4, grow: float = 0.05,
                 clean_weight: float = 0.5, search_steps: int = 6, bound: str = "ibp",
                 device: torch.device | str = "cpu") -> None:
        Method.__init__(self)        # MMA's constructor sets up its attack, which this does not use
        CertMMAOptions(d_max, grow, clean_weight, search_steps, bound)    # the checks, in one place
        self.norm, self.d_max, self.grow, self.clean_weight = norm, d_max, grow, clean_weight
        self.search_steps, self.beta = search_steps, 1.0 if bound == "crown-ibp" else 0.0
        self.eps = torch.zeros(num_examples, device=device)
        self.updated = torch.full((num_examples,), -1, dtype=torch.int64, device=device)
        self._chains: dict[int, Chain] = {}

    @torch.no_grad()
    def certified(self, chain: Chain, x: Tensor, y: Tensor, start: Tensor) -> Tensor:
        """Per example, a radius in ``[0, d_max]`` the bound proves, by bisection warm-started at ``start``."""
        def proven(r: Tensor) -> Tensor:
            return (margin_bounds(chain, x, y, r, self.norm, self.beta) > 0).all(1)

        start = start.clamp(0, self.d_max)
        ok = proven(start) & (start > 0)
        lo = torch.where(ok, start, torch.zeros_like(start))
        hi = torch.where(ok | (start == 0), torch.full_like(start, self.d_max), start)
        for _ in range(self.search_steps):
            mid = (lo + hi) / 2
            ok = proven(mid)
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        return lo

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        b = x.shape[0]
        logits = model(x)
        ce_clean = F.cross_entropy(logits, y, reduction="none")
        correct = logits.detach().argmax(1) == y
        cidx = correct.nonzero().squeeze(1)
        new_eps = torch.zeros(b, device=x.device)
        term = torch.where(correct, torch.zeros_like(ce_clean), ce_clean)
        n_bound = 0
        if cidx.numel():
            chain = chain_of(unwrap(model), x, self._chains)
            xc, yc = x[cidx], y[cidx]
            margin = self.certified(chain, xc, yc, self.eps[index[cidx]].to(x.dtype))
            radius = (margin + self.grow).clamp(max=self.d_max)
            low = margin_bounds(chain, xc, yc, radius, self.norm, self.beta)
            bound_ce = F.cross_entropy(worst_logits(low, yc), yc, reduction="none")
            counted = margin < self.d_max
            term = term.index_put((cidx,), torch.where(counted, bound_ce, torch.zeros_like(bound_ce)))
            new_eps[cidx] = margin.to(new_eps.dtype)
            n_bound = int(counted.sum())
        self.eps[index] = new_eps
        self.updated[index] = self.step
        c = self.clean_weight
        loss = c * ce_clean.mean() + (1 - c) * term.sum() / b
        stats = {"loss": float(loss.detach()), "acc": float(correct.float().mean()),
                 "eps": float(new_eps[cidx].mean()) if cidx.numel() else 0.0, "bound_frac": n_bound / b}
        return loss, stats

    def to(self, device: torch.device | str) -> CertMMA:
        super().to(device)
        self._chains.clear()
        return self
