"""Per-example losses on logits (shape ``[B, C]``) and int64 labels ``[B]``, and the objectives PGD ascends.

Sign convention: every loss here grows as the example moves towards
misclassification, so attacks always ascend.

A *loss* is a function ``(logits, y) -> [B]``. An :class:`Objective` is what
the PGD engine (:func:`maxmargin.attacks.steps.pgd_loop`) ascends: it is
called as ``objective(logits, y, clean_logits)`` with the logits at the
attacked point, the labels and the logits at the clean point ``x``, so that
objectives comparing ``x′`` with ``x`` (TRADES's KL) run through the same
loop as CE or CW. :func:`get_objective` finds one by name (``"ce"``,
``"cw"``, ``"slm"``, ``"lm"``, ``"kl"``, ``"targeted"``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def kl_divergence(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """Per-example ``KL(f(x) ‖ f(x′))`` between the softmax distributions (TRADES)."""
    p_log = F.log_softmax(clean_logits, dim=1)
    q_log = F.log_softmax(adv_logits, dim=1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=1)


def targeted_margin(logits: Tensor, target: Tensor) -> Tensor:
    """``f_t − max_{j≠t} f_j``: grows as class ``t`` takes the lead (≥ 0 once it leads)."""
    return -logit_margin(logits, target)


@dataclass(frozen=True)
class Objective:
    """A per-example quantity the PGD engine ascends: ``objective(logits, y, clean_logits) -> [B]``.

    ``fn`` is a loss ``(logits, y)``, or, with ``uses_clean_logits``, a
    function ``(logits, y, clean_logits)`` of the clean point's logits too
    (the engine then needs them; it computes them once, before the first
    step). With ``targeted``, ``y`` holds the class each example is pushed
    towards rather than its label, and the goal is reached where that class
    leads. Frozen, so that equal objectives compare equal: the CUDA-graph
    cache (:mod:`maxmargin.attacks.graphs`) keys captures on them.
    """

    name: str
    fn: Callable[..., Tensor]
    uses_clean_logits: bool = False
    targeted: bool = False

    def __call__(self, logits: Tensor, y: Tensor, clean_logits: Tensor | None = None) -> Tensor:
        """Per-example values at ``logits`` (shape ``[B]``)."""
        if not self.uses_clean_logits:
            return self.fn(logits, y)
        if clean_logits is None:
            raise ValueError(f"objective {self.name!r} compares with the clean point: pass clean_logits")
        return self.fn(logits, y, clean_logits)

    def reached(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per example, whether the attack's goal holds at ``logits``: misclassified, or ``y`` leads if targeted."""
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y


def as_objective(loss: Objective | LossFn) -> Objective:
    """``loss`` itself if it is an :class:`Objective`, else the plain ``(logits, y)`` loss as one."""
    if isinstance(loss, Objective):
        return loss
    return Objective(getattr(loss, "__name__", "loss"), loss)


def _kl_from_clean(logits: Tensor, y: Tensor, clean_logits: Tensor) -> Tensor:
    # TRADES has no labels in its inner maximization: y is not read
    return kl_divergence(clean_logits, logits)


OBJECTIVES: dict[str, Objective] = {
    **{name: Objective(name, fn) for name, fn in LOSSES.items()},
    "kl": Objective("kl", _kl_from_clean, uses_clean_logits=True),
    "targeted": Objective("targeted", targeted_margin, targeted=True),
}


def get_objective(name: str | Objective) -> Objective:
    """An :class:`Objective` by name (or as given); a ``ValueError`` names the allowed ones.

    Every name :func:`get_loss` knows is an objective of the same name that
    ascends that loss.
    """
    if isinstance(name, Objective):
        return name
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in OBJECTIVES)
        raise ValueError(f"loss must be one of {allowed}, got {name!r}") from None
