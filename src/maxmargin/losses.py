"""Per-example losses on logits (shape ``[B, C]``) and int64 labels ``[B]``.

Sign convention: every loss here grows as the example moves towards
misclassification, so attacks always ascend.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

CW_KAPPA = 50.0

LossFn = Callable[[Tensor, Tensor], Tensor]


def _others(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The true-class logit ``[B]`` and the logits with the true class masked to -inf."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    return true, logits.masked_fill(mask, float("-inf"))


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``LM = max_{j≠y} f_j − f_y``: negative while the example is classified correctly."""
    true, others = _others(logits, y)
    return others.amax(dim=1) - true


def strict_logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """LM where it is > 0, else −1: ``≥ 0`` only where another class strictly leads.

    A search converged onto the boundary often lands where the two logits
    round to the same float (LM exactly 0) and argmax picks the true class;
    a point that is returned as adversarial must not be such a tie.
    """
    lm = logit_margin(logits, y)
    return torch.where(lm > 0, lm, torch.full_like(lm, -1.0))


def soft_logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``SLM = logsumexp_{j≠y} f_j − f_y`` (a smooth upper bound of LM)."""
    true, others = _others(logits, y)
    return torch.logsumexp(others, dim=1) - true


def cw_loss(logits: Tensor, y: Tensor, kappa: float = CW_KAPPA) -> Tensor:
    """Carlini-Wagner margin loss ``clamp(LM + κ, min=0)``, κ = 50."""
    return torch.clamp(logit_margin(logits, y) + kappa, min=0.0)


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy."""
    return F.cross_entropy(logits, y, reduction="none")


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "cw": cw_loss,
    "slm": soft_logit_margin,
    "lm": logit_margin,
}


def get_loss(name: str) -> LossFn:
    """Look an attack loss up by name; a ``ValueError`` names the allowed ones."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in LOSSES)
        raise ValueError(f"loss must be one of {allowed}, got {name!r}") from None
