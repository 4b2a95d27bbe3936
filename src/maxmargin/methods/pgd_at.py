"""PGD adversarial training (Madry et al.), with the PGDLS linear ε schedule."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import pgd
from ..distributed import unwrap
from .base import Method


class PGDAT(Method):
    """Cross-entropy at a PGD point of radius ``eps`` (random start, step ``2.5·ε/steps``).

    ``ls_steps > 0`` is PGDLS: the radius grows linearly from 0 to ``eps`` over
    the first ``ls_steps`` training steps.
    """

    name = "pgd"

    def __init__(self, norm: str, eps: float, steps: int = 40, ls_steps: int = 0,
                 step_size: float | None = None) -> None:
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.norm, self.eps, self.steps, self.ls_steps, self.step_size = norm, eps, steps, ls_steps, step_size

    def current_eps(self) -> float:
        if self.ls_steps <= 0:
            return self.eps
        return self.eps * min(1.0, (self.step + 1) / self.ls_steps)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        eps = self.current_eps()
        step = None if self.step_size is None else self.step_size * eps / self.eps
        x_adv = pgd(unwrap(model), x, y, norm=self.norm, eps=eps, steps=self.steps, step_size=step)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "adv_acc": float(acc), "eps": eps}
