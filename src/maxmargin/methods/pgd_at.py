"""PGD adversarial training (Madry et al.), with the PGDLS linear ε schedule."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.pgd import pgd
from ..distributed import unwrap
from ..losses import LOSSES
from ..options import Options, option
from .base import Method, ramped_eps, register


@dataclass(frozen=True)
class PGDATOptions(Options):
    eps: float = option(0.3, "radius of the training PGD", min=0)
    steps: int = option(40, "PGD steps per training step", positive=True)
    ls_steps: int = option(0, "PGDLS: eps grows linearly over this many training steps (0 = off)", min=0)
    step_size: float | None = option(None, "PGD step (none = 2.5·eps/steps)", min=0)
    attack_loss: str = option("ce", "loss the PGD ascends (paper presets: slm)", choices=lambda: tuple(LOSSES))


@register("pgd")
class PGDAT(Method):
    """Cross-entropy at a PGD point of radius ``eps`` (random start, step ``2.5·ε/steps``).

    ``ls_steps > 0`` is PGDLS: the radius grows linearly from 0 to ``eps`` over
    the first ``ls_steps`` training steps. ``attack_loss`` is what the inner PGD
    ascends: ``"ce"`` (Madry et al.), or ``"slm"`` as the MMA paper's appendix
    trains its PGD baselines.
    """

    Options = PGDATOptions
    legacy_keys = {"attack_steps": "steps", "pgdls_steps": "ls_steps"}

    def __init__(self, norm: str, eps: float, steps: int = 40, ls_steps: int = 0,
                 step_size: float | None = None, attack_loss: str = "ce") -> None:
        super().__init__()
        PGDATOptions(eps, steps, ls_steps, step_size, attack_loss)    # the checks, in one place
        self.norm, self.eps, self.steps, self.ls_steps, self.step_size = norm, eps, steps, ls_steps, step_size
        self.attack_loss = attack_loss

    def current_eps(self) -> float:
        return ramped_eps(self.eps, self.step, self.ls_steps)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        eps = self.current_eps()
        step = None if self.step_size is None or self.eps == 0 else self.step_size * eps / self.eps
        x_adv = pgd(unwrap(model), x, y, norm=self.norm, eps=eps, steps=self.steps, step_size=step,
                    loss=self.attack_loss)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "adv_acc": float(acc), "eps": eps}
