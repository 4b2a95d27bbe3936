"""MART (Wang et al., ICLR 2020): misclassification-aware adversarial training.

``L = BCE(p(x′), y) + β · mean_i KL(p(x_i) ‖ p(x′_i)) · (1 − p_y(x_i))`` with the boosted
cross-entropy ``BCE(p, y) = −log p_y − log(1 − max_{k≠y} p_k)`` and ``x′`` from a PGD on
the cross-entropy. The KL term weighs most where the clean prediction is least sure of the
true class, which is where the paper finds misclassified examples matter.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import pgd
from ..distributed import unwrap
from ..options import Options, option
from .base import Method, ramped_eps, register


@dataclass(frozen=True)
class MARTOptions(Options):
    eps: float = option(0.3, "radius of the training PGD", min=0)
    steps: int = option(10, "PGD steps per training step", positive=True)
    beta: float = option(6.0, "weight of the misclassification-aware KL term (the paper's 6)", min=0)
    step_size: float | None = option(None, "PGD step (none = 2.5·eps/steps)", min=0)
    ls_steps: int = option(0, "eps grows linearly over this many training steps, as in PGDLS (0 = off)", min=0)


def boosted_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example ``−log p_y − log(1 − max_{k≠y} p_k)``: also pushes down the strongest wrong class."""
    logp = F.log_softmax(logits, dim=1)
    others = logp.scatter(1, y[:, None], float("-inf"))
    # log(1 − p) from log p, stable for p near 1: log(−expm1(log p))
    log_rest = torch.log(-torch.expm1(others.amax(1).clamp(max=-1e-12)))
    return -logp.gather(1, y[:, None]).squeeze(1) - log_rest


def mart_loss(clean_logits: Tensor, adv_logits: Tensor, y: Tensor, beta: float) -> Tensor:
    """MART's batch loss from the clean and the adversarial logits (differentiable in both)."""
    p_clean = F.softmax(clean_logits, dim=1)
    kl = (p_clean * (F.log_softmax(clean_logits, dim=1) - F.log_softmax(adv_logits, dim=1))).sum(1)
    weight = 1 - p_clean.gather(1, y[:, None]).squeeze(1)
    return boosted_cross_entropy(adv_logits, y).mean() + beta * (kl * weight).mean()


@register("mart")
class MART(Method):
    """Boosted CE at a PGD point plus β·KL(clean ‖ adversarial) weighted by ``1 − p_y(x)``."""

    Options = MARTOptions

    def __init__(self, norm: str, eps: float = 0.3, steps: int = 10, beta: float = 6.0,
                 step_size: float | None = None, ls_steps: int = 0) -> None:
        super().__init__()
        MARTOptions(eps, steps, beta, step_size, ls_steps)    # the checks, in one place
        self.norm, self.eps, self.steps, self.beta, self.step_size = norm, eps, steps, beta, step_size
        self.ls_steps = ls_steps

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        eps = ramped_eps(self.eps, self.step, self.ls_steps)
        step = None if self.step_size is None or self.eps == 0 else self.step_size * eps / self.eps
        x_adv = pgd(unwrap(model), x, y, norm=self.norm, eps=eps, steps=self.steps, step_size=step, loss="ce")
        clean = model(x)
        adv = model(x_adv)
        loss = mart_loss(clean, adv, y, self.beta)
        return loss, {"loss": float(loss.detach()), "acc": float((clean.argmax(1) == y).float().mean()),
                      "adv_acc": float((adv.argmax(1) == y).float().mean()), "eps": eps}
