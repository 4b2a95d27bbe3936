"""Standard (non-robust) training: mean cross-entropy on clean inputs."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method, register


@register("standard")
class Standard(Method):
    """Mean cross-entropy on the clean batch; no options."""

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc)}
