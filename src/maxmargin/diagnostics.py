"""Signs of gradient masking in an evaluation (AutoAttack's lesson: say so when PGD looks too good).

Each flag is one sentence: what was seen and what to do about it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .attacks._common import Bounds, frozen, input_grad
from .losses import cross_entropy
from .norm_tables import universal_eps

MONOTONE_SLACK = 0.005      # robust accuracy may wobble by half a point between separate runs
CHANCE_SLACK = 0.05
CDF_SLACK = 0.05           # a stronger search beating PGD by a few points is normal; by 5 it is a sign
DEAD_GRADIENTS = 0.10       # share of examples with zero or non-finite input gradients


def dead_gradient_share(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Fraction of examples whose input gradient of the CE loss is all zero or not finite."""
    dead = 0
    with frozen(model):
        for s in range(0, x.shape[0], batch_size):
            xs = x[s:s + batch_size].clone().requires_grad_(True)
            # non-finite entries come back as 0, so "all zero" covers masked, detached and shattered alike
            g = input_grad(cross_entropy(model(xs), y[s:s + batch_size]).sum(), xs).flatten(1)
            dead += int((g.abs().amax(1) == 0).sum())
    return dead / max(x.shape[0], 1)


def masking_flags(acc: dict[float, float], attacks: list[dict[str, Any]], norm: str, y: Tensor,
                  input_shape: tuple[int, ...], bounds: Bounds, margin_cdf: dict[float, float] | None,
                  dead_share: float) -> list[str]:
    """Every sign of gradient masking in one evaluation's plain results.

    ``acc``: robust accuracy per ε; ``attacks``: the attack table's rows in
    the order they ran; ``y``: the labels (for chance); ``margin_cdf``: the
    accuracy the margins predict, if measured; ``dead_share``: the share of
    examples without an input gradient (:func:`dead_gradient_share`).
    """
    flags: list[str] = []
    grid = list(acc)
    hint = "re-run with --protocol autoattack and check the model for gradient masking"

    order = sorted(grid)
    for a, b in zip(order, order[1:]):
        if acc[b] > acc[a] + MONOTONE_SLACK:
            flags.append(f"robust accuracy rises with ε ({acc[a]:.3f} at {a:g}, {acc[b]:.3f} at {b:g}): "
                         f"the attacks are failing, not the model succeeding; {hint}")
            break

    ueps = universal_eps(norm, tuple(input_shape), bounds)
    chance = float(torch.bincount(y.cpu()).max()) / max(len(y), 1)
    for e in grid:
        if e >= ueps and acc[e] > chance + CHANCE_SLACK:
            flags.append(f"robust accuracy {acc[e]:.3f} at ε={e:g}, where every input can be moved to the middle "
                         f"of the box, exceeds chance ({chance:.3f}); {hint}")
            break

    beaters = {"fgsm": "FGSM", "random-search": "random search", "transfer-pgd": "a transfer attack"}
    for row in attacks:
        # these run after white-box PGD, so anything they break PGD missed
        if row["attack"] in beaters and row["newly_broken"] > 0:
            src = f" from {row['source']}" if row["attack"] == "transfer-pgd" else ""
            flags.append(f"{beaters[row['attack']]}{src} broke {row['newly_broken']} examples at ε={row['eps']:g} "
                         f"that white-box PGD missed: its gradients do not lead to the adversarial points; {hint}")
            break
    for row in attacks:
        if row["attack"] == "margin-search" and row["newly_broken"] > CDF_SLACK * len(y):
            flags.append(f"the margin search found adversarial points within ε={row['eps']:g} for "
                         f"{row['newly_broken']} examples all other attacks missed; {hint}")
            break

    cdf = margin_cdf
    if cdf is not None and not any(r["attack"] == "margin-search" for r in attacks):
        for e in grid:
            if acc[e] > cdf[e] + CDF_SLACK:
                flags.append(f"robust accuracy {acc[e]:.3f} at ε={e:g} is above what the margins predict "
                             f"({cdf[e]:.3f}): the attacks miss adversarial points the margin search found; {hint}")
                break

    if dead_share > DEAD_GRADIENTS:
        flags.append(f"input gradients are zero or not finite on {dead_share:.0%} of examples: gradient-based attacks "
                     f"cannot work here (masked or shattered gradients); {hint}")
    return flags


def certificate_flags(robust: Tensor, certified: Tensor, eps: list[float]) -> list[str]:
    """An example certified at ε that an attack broke at ε means a bug in the bound or the attack.

    ``robust``: bool ``[len(eps), N]`` (every attack failed); ``certified``: ``[N]`` radii.
    """
    for i, e in enumerate(eps):
        broken = int(((certified.to(robust.device) >= e) & ~robust[i]).sum())
        if broken:
            return [f"{broken} examples certified robust at ε={e:g} were broken by an attack: the certificate or "
                    "the attack is wrong; report this as a bug with the checkpoint"]
    return []


def sandwich_flags(lower: Tensor, upper: Tensor) -> list[str]:
    """A certified radius above the norm of a verified adversarial point means a bug in the bound or the attack.

    ``lower``: certified radii; ``upper``: the attack's margins (each the norm of a point checked to be
    misclassified, or the search's cap where none was found, which no certificate exceeds either).
    """
    above = int((lower.to(upper.device) > upper * (1 + 1e-6) + 1e-7).sum())
    if above:
        return [f"{above} examples have a certified radius above the norm of a verified adversarial point: the "
                "certificate or the attack is wrong; report this as a bug with the checkpoint"]
    return []
