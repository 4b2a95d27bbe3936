"""TRADES (Zhang et al., ICML 2019): CE(clean) + β·KL(f(x) ‖ f(x′)), x′ from a KL-maximizing PGD."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks._common import frozen
from ..attacks.steps import pgd_loop
from ..distributed import unwrap
from ..losses import get_objective, kl_divergence
from ..norms import get_norm, per_example
from ..options import Options, option
from .base import Method, register


def kl_pgd(model: nn.Module, x: Tensor, norm: str, eps: float, steps: int, step_size: float,
           bounds: tuple[float, float] = (0.0, 1.0), start_std: float = 0.001) -> Tensor:
    """PGD maximizing ``KL(f(x) ‖ f(x′))`` from ``x′ = x + start_std·N(0, 1)``, in eval mode.

    The iteration is the attacks' own (:func:`maxmargin.attacks.steps.pgd_loop`
    on the ``"kl"`` objective, which reads the clean logits); only the start
    is TRADES's: a small Gaussian, not a uniform draw in the ball.
    """
    nrm = get_norm(norm)
    e = per_example(eps, x, "eps")
    step = per_example(step_size, x, "step_size")
    lo, hi = bounds
    x = x.detach()
    with frozen(model):
        with torch.no_grad():
            clean = model(x)
        x_adv = torch.clamp(x + nrm.project(start_std * torch.randn_like(x), e), lo, hi)
        # KL reads no labels: the clean prediction stands in for them
        return pgd_loop(model, x, clean.argmax(1), x_adv, nrm, e, steps, step, get_objective("kl"), lo, hi,
                        clean_logits=clean)


@dataclass(frozen=True)
class TRADESOptions(Options):
    eps: float = option(0.3, "radius of the KL-maximizing PGD", min=0)
    steps: int = option(40, "steps of the KL-maximizing PGD", positive=True)
    beta: float = option(6.0, "weight of the KL term", min=0)
    step_size: float | None = option(None, "step of the KL PGD (none = 2.5·eps/steps)", min=0)


@register("trades")
class TRADES(Method):
    """``CE(f(x), y) + β·KL(f(x) ‖ f(x′))``, ``x′`` from a PGD that maximizes the KL term."""

    Options = TRADESOptions
    legacy_keys = {"attack_steps": "steps", "attack_step": "step_size"}

    def __init__(self, norm: str, eps: float, steps: int, beta: float = 6.0, step_size: float | None = None) -> None:
        super().__init__()
        TRADESOptions(eps, steps, beta, step_size)    # the checks, in one place
        self.norm, self.eps, self.steps, self.beta = norm, eps, steps, beta
        self.step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        x_adv = kl_pgd(unwrap(model), x, self.norm, self.eps, self.steps, self.step_size)
        logits = model(x)
        adv_logits = model(x_adv)
        ce = F.cross_entropy(logits, y)
        kl = kl_divergence(logits, adv_logits).mean()
        loss = ce + self.beta * kl
        return loss, {"loss": float(loss.detach()), "acc": float((logits.argmax(1) == y).float().mean()),
                      "kl": float(kl.detach())}
