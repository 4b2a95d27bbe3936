"""All norm-specific math lives here.

Attacks, training objectives and evaluation ask a :class:`Norm` for what they
need (measure, project, steepest-ascent direction, random start, dual norm)
and never branch on the norm name themselves, so adding ``"l1"`` touches only
this module.

Radii are per-example tensors of shape ``[B]``; perturbations have any shape
``[B, ...]``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# Guards divisions by a norm; small enough not to move any perturbation that
# matters at float32 precision.
_TINY = 1e-12


def tiny(t: Tensor) -> float:
    """``_TINY``, or the dtype's smallest normal number where ``_TINY`` is not one (float16: 1e-12 is 0)."""
    return max(_TINY, torch.finfo(t.dtype).tiny)


def bcast(v: Tensor, like: Tensor) -> Tensor:
    """View a per-example vector ``[B]`` so it broadcasts against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class Norm(ABC):
    """Interface of a norm; see :class:`LinfNorm` and :class:`L2Norm`."""

    name: str = ""

    @abstractmethod
    def measure(self, delta: Tensor) -> Tensor:
        """Per-example norm of ``delta`` (shape ``[B]``)."""

    @abstractmethod
    def dual(self, g: Tensor) -> Tensor:
        """Per-example dual norm of ``g``: the rate of a linear function along a unit step."""

    @abstractmethod
    def row_duals(self, apply_abs: Callable[[Tensor], Tensor], apply_sq: Callable[[Tensor], Tensor],
                  ones: Tensor) -> Tensor:
        """Dual norm of every row of a linear map ``W`` that is only given as functions.

        ``apply_abs(v)`` computes ``|W| v`` and ``apply_sq(v)`` computes ``W² v``
        (elementwise powers); ``ones`` is an all-ones input. The result is how
        far each output can move over a unit ball of inputs.
        """

    @abstractmethod
    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        """Closest point to ``delta`` inside the ball of per-example radius ``eps``."""

    @abstractmethod
    def direction(self, g: Tensor) -> Tensor:
        """Unit-norm steepest-ascent direction for gradient ``g`` (0 where ``g`` is 0)."""

    @abstractmethod
    def random(self, like: Tensor, eps: Tensor) -> Tensor:
        """A random point inside the ball of radius ``eps``, uniform in volume."""


class LinfNorm(Norm):
    name = "linf"

    def measure(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(dim=1)

    def dual(self, g: Tensor) -> Tensor:
        return g.flatten(1).abs().sum(dim=1)

    def row_duals(self, apply_abs, apply_sq, ones):
        return apply_abs(ones)

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        e = bcast(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)

    def direction(self, g: Tensor) -> Tensor:
        return g.sign()

    def random(self, like: Tensor, eps: Tensor) -> Tensor:
        u = torch.rand_like(like) * 2 - 1
        return u * bcast(eps, like)


class L2Norm(Norm):
    name = "l2"

    def measure(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def dual(self, g: Tensor) -> Tensor:
        return self.measure(g)

    def row_duals(self, apply_abs, apply_sq, ones):
        return apply_sq(ones).clamp_min(0).sqrt()

    def project(self, delta: Tensor, eps: Tensor) -> Tensor:
        n = self.measure(delta)
        scale = torch.clamp(eps / n.clamp_min(tiny(n)), max=1.0)
        return delta * bcast(scale, delta)

    def direction(self, g: Tensor) -> Tensor:
        n = self.measure(g)
        return g / bcast(n.clamp_min(tiny(n)), g)

    def random(self, like: Tensor, eps: Tensor) -> Tensor:
        # Gaussian direction, radius r·U^(1/d): uniform in the ball's volume.
        g = torch.randn_like(like)
        d = like.shape[1:].numel()     # per example; like[0] fails on an empty batch
        r = torch.rand(like.shape[0], device=like.device, dtype=like.dtype) ** (1.0 / d)
        return self.direction(g) * bcast(r * eps, like)


def l2_to_hyperplane(w: Tensor, c: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Per row, the smallest-L2 ``d`` with ``w·d = c`` and ``lower ≤ d ≤ upper`` (``lower ≤ 0 ≤ upper``).

    The minimizer is ``d = clip(λw, lower, upper)`` for the one ``λ`` that
    meets the constraint; ``w·clip(λw)`` is piecewise linear and monotone in
    ``λ``, so ``λ`` is read off exactly from the sorted breakpoints where
    coordinates reach the box (a bisection on ``λ`` loses its precision when a
    tiny ``w_i`` puts a breakpoint far away). Where the box cannot reach the
    hyperplane, every coordinate goes to the box face that moves towards it.
    Rows are flattened; ``c`` has one entry per row.
    """
    shape = w.shape
    w, lower, upper = w.flatten(1), lower.flatten(1), upper.flatten(1)
    sign = torch.sign(c)
    v = w * sign[:, None]              # solve v·clip(μv) = |c| for μ ≥ 0
    want = c.abs()
    face = torch.where(v > 0, upper, lower)
    sat = v * face                     # a saturated coordinate's share of v·d (≥ 0)
    vv = v * v
    t = torch.where(v != 0, face / torch.where(v != 0, v, torch.ones_like(v)), torch.full_like(v, float("inf")))
    t, order = t.sort(dim=1)
    sat_s, vv_s = sat.gather(1, order), vv.gather(1, order)
    # before the k-th breakpoint the first k coordinates are saturated: h(μ) = S_k + μ (V − Q_k)
    zero = torch.zeros_like(want)[:, None]
    s_before = torch.cat([zero, sat_s.cumsum(1)[:, :-1]], 1)
    # the free coordinates' Σv² as a suffix sum: V − (prefix sum) cancels once most of the mass is at the box
    free = vv_s.flip(1).cumsum(1).flip(1)
    h_at = s_before + torch.where(torch.isfinite(t), t, torch.zeros_like(t)) * free
    h_at = torch.where(torch.isfinite(t), h_at, torch.full_like(h_at, float("inf")))
    k = (h_at < want[:, None]).sum(1, keepdim=True).clamp(max=t.shape[1] - 1)
    mu = (want[:, None] - s_before.gather(1, k)) / free.gather(1, k).clamp_min(tiny(free))
    # out of reach: every coordinate with v ≠ 0 goes to its face (μ = ∞)
    mu = torch.where(sat.sum(1, keepdim=True) < want[:, None], torch.full_like(mu, float("inf")), mu)
    d = torch.where(v != 0, torch.minimum(torch.maximum(mu * v, lower), upper), torch.zeros_like(v))
    return d.reshape(shape)


NORMS: dict[str, Norm] = {n.name: n for n in (LinfNorm(), L2Norm())}


def get_norm(name: str | Norm) -> Norm:
    """Look a norm up by name; a ``ValueError`` names the allowed ones."""
    if isinstance(name, Norm):
        return name
    try:
        return NORMS[name]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in NORMS)
        raise ValueError(f"norm must be one of {allowed}, got {name!r}") from None


def per_example(value: float | Tensor, x: Tensor, what: str = "eps") -> Tensor:
    """Turn a float, a list or a tensor radius into a non-negative finite ``[B]`` tensor on ``x``'s device.

    A scalar (float or 0-d tensor) serves every example; anything else must
    hold one value per example. Whatever is refused raises a ``ValueError``
    naming ``what``.
    """
    b = x.shape[0]
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number or a tensor of {b} per-example values, got {value!r}")
    try:
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device).detach()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be a number or a tensor of {b} per-example values, got {value!r}") from None
    # checked before a scalar is spread over the batch: a bad radius is bad for an empty batch too
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} must be finite")
    if bool((t < 0).any()):
        raise ValueError(f"{what} must be >= 0, got a minimum of {float(t.min()):g}")
    if t.dim() == 0:
        t = t.expand(b)
    t = t.reshape(-1)
    if t.numel() != b:
        raise ValueError(f"{what} must be a float or a tensor of {b} per-example values, got {t.numel()}")
    return t.clone()


def radius_grid(value: float | Tensor | Sequence[float], what: str = "eps") -> list[float]:
    """A grid of radii (one number, a list or a tensor) as finite non-negative floats; ``ValueError`` names ``what``."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be a number or a list of numbers, got {value!r}") from None
    if isinstance(value, bool) or t.numel() == 0:
        raise ValueError(f"{what} must hold at least one radius, got {value!r}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{what} must be finite and >= 0, got {t.tolist()}")
    return [float(v) for v in t]
