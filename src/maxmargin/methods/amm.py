"""Adversarial Margin Maximization (AMM, Yan, Guo & Zhang, arXiv 1911.05916).

The regularizer is built on a *differentiable* DeepFool perturbation ``r``:
its input gradients are taken with ``create_graph=True``, so the penalty's
gradient reaches the weights through ``r`` itself. Correctly classified
examples are pushed away from the boundary with ``λ·exp(−c‖r‖₂)``,
misclassified ones pulled towards the right side with ``λ·exp(d‖r‖₂)``
(DeepFool towards the true label), only where DeepFool succeeded.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import unwrap
from ..options import Options, option
from .base import Method, register


@contextmanager
def batchnorm_eval(model: nn.Module) -> Iterator[None]:
    """BatchNorm in eval mode (running statistics, no updates); everything else as it was."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in bns]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m, t in zip(bns, modes):
            m.training = t


@dataclass
class DeepFoolResult:
    r: Tensor          # the perturbation (overshoot included), differentiable w.r.t. the weights
    norm: Tensor       # ‖r‖₂ per example
    success: Tensor    # the class flipped (correct examples) or became right (misclassified ones)
    correct: Tensor    # clean prediction was right


def _gathered(logits: Tensor, idx: Tensor) -> Tensor:
    return logits.gather(1, idx[:, None]).squeeze(1)


def deepfool_perturbation(model: nn.Module, x: Tensor, y: Tensor, top_k: int = 10, iters: int = 5,
                          overshoot: float = 0.02, grad_eps: float = 1e-5) -> DeepFoolResult:
    """Batched differentiable L2 DeepFool.

    Correct examples move towards the nearest linearized boundary among the
    ``top_k`` classes of the clean logits; misclassified ones towards the
    boundary between the current top class and the true label. Rows stop
    moving once they have flipped. One gradient call per candidate class per
    iteration serves the whole batch.
    """
    b = x.shape[0]
    with torch.no_grad():
        clean = model(x)
    correct = clean.argmax(1) == y
    k = min(top_k, clean.shape[1]) - 1
    cand = clean.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices     # [B, k]
    r = torch.zeros_like(x)
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    view = (-1,) + (1,) * (x.dim() - 1)
    with torch.enable_grad():   # the perturbation is a function of the weights even inside no_grad
        r = _deepfool_steps(model, x, y, r, active, correct, cand, k, iters, grad_eps, view)
    r = (1 + overshoot) * r
    with torch.no_grad():
        final = model(x + r).argmax(1)
    success = torch.where(correct, final != y, final == y)
    return DeepFoolResult(r, r.flatten(1).norm(dim=1), success, correct)


def _deepfool_steps(model: nn.Module, x: Tensor, y: Tensor, r: Tensor, active: Tensor, correct: Tensor,
                    cand: Tensor, k: int, iters: int, grad_eps: float, view: tuple[int, ...]) -> Tensor:
    b = x.shape[0]
    for _ in range(iters):
        xr = x + r
        if not xr.requires_grad:
            xr = xr.requires_grad_(True)
        logits = model(xr)
        pred = logits.argmax(1)
        active = active & torch.where(correct, pred == y, pred != y)
        if not bool(active.any()):
            break
        fy = _gathered(logits, y)
        best_dist = torch.full((b,), float("inf"), device=x.device)
        step = torch.zeros_like(x)
        # correct rows: the nearest of the candidate boundaries (f_j − f_y < 0 grows to 0)
        for j in range(k):
            diff = _gathered(logits, cand[:, j]) - fy
            (w,) = torch.autograd.grad(diff.sum(), xr, create_graph=True)
            wn = w.flatten(1).norm(dim=1) + grad_eps
            dist = diff.abs() / wn
            take = correct & (dist.detach() < best_dist)
            best_dist = torch.where(take, dist.detach(), best_dist)
            move = ((diff.abs() + 1e-4) / wn**2).view(view) * w
            step = torch.where(take.view(view), move, step)
        # misclassified rows: towards the true label (f_y − f_top < 0 grows to 0)
        wrong = ~correct
        if bool(wrong.any()):
            diff = fy - _gathered(logits, pred)
            (w,) = torch.autograd.grad(diff.sum(), xr, create_graph=True)
            wn = w.flatten(1).norm(dim=1) + grad_eps
            move = ((diff.abs() + 1e-4) / wn**2).view(view) * w
            step = torch.where(wrong.view(view), move, step)
        r = r + torch.where(active.view(view), step, torch.zeros_like(step))
    return r


@dataclass(frozen=True)
class AMMOptions(Options):
    lam: float = option(32.0, "λ, the weight of the penalty", min=0)
    c: float = option(2.0, "shrinkage on correct examples, λ·exp(−c‖r‖)", min=0)
    d: float = option(1.0, "growth on misclassified ones, λ·exp(d‖r‖)", min=0)
    top_k: int = option(10, "candidate classes of DeepFool (top of the clean logits)", positive=True)
    iters: int = option(5, "DeepFool iterations at most", positive=True)
    overshoot: float = option(0.02, "DeepFool's overshoot", min=0)
    aggregation: str = option("avg", "avg, or min (the authors' published recipe)", choices=("avg", "min"))
    grad_eps: float = option(1e-5, "added to gradient norms (authors: 5e-6 MNIST, 1e-5 otherwise)", min=0)


@register("amm")
class AMM(Method):
    """CE plus the AMM penalty, averaged over the batch.

    ``aggregation="min"`` (the authors' published recipe) penalizes, among the
    correctly classified examples with the 20 % smallest ‖r‖ of the batch, only
    the smallest one of each class; misclassified examples are penalized as
    with ``"avg"``.
    """

    Options = AMMOptions
    legacy_keys = {f"amm_{k}": k for k in ("lam", "c", "d", "top_k", "iters", "overshoot", "aggregation", "grad_eps")}

    def __init__(self, lam: float, c: float, d: float, top_k: int = 10, iters: int = 5, overshoot: float = 0.02,
                 aggregation: str = "avg", grad_eps: float = 1e-5) -> None:
        super().__init__()
        AMMOptions(lam, c, d, top_k, iters, overshoot, aggregation, grad_eps)    # the checks, in one place
        self.lam, self.c, self.d = lam, c, d
        self.top_k, self.iters, self.overshoot, self.aggregation, self.grad_eps = (
            top_k, iters, overshoot, aggregation, grad_eps)

    def penalty(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, DeepFoolResult]:
        plain = unwrap(model)
        with batchnorm_eval(plain):
            df = deepfool_perturbation(plain, x, y, self.top_k, self.iters, self.overshoot, self.grad_eps)
        good = df.correct & df.success
        bad = ~df.correct & df.success
        if self.aggregation == "min":
            good = good & self._smallest_per_class(df.norm.detach(), y, good)
        per = torch.where(good, self.lam * torch.exp(-self.c * df.norm),
                          torch.where(bad, self.lam * torch.exp(self.d * df.norm), torch.zeros_like(df.norm)))
        return per.sum() / x.shape[0], df

    @staticmethod
    def _smallest_per_class(norm: Tensor, y: Tensor, eligible: Tensor) -> Tensor:
        if not bool(eligible.any()):
            return eligible
        cut = torch.quantile(norm[eligible], 0.2)
        pool = eligible & (norm <= cut)
        big = torch.full_like(norm, float("inf"))
        masked = torch.where(pool, norm, big)
        classes = int(y.max()) + 1
        per_class_min = torch.full((classes,), float("inf"), device=norm.device).scatter_reduce(
            0, y, masked, reduce="amin")
        return pool & (masked == per_class_min[y])

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        pen, df = self.penalty(model, x, y)
        loss = ce + pen
        return loss, {"loss": float(loss.detach()), "acc": float((logits.argmax(1) == y).float().mean()),
                      "penalty": float(pen.detach()), "r": float(df.norm.detach()[df.success].mean())
                      if bool(df.success.any()) else 0.0}
