"""Per-example margin estimates: upper bounds on the distance to the decision boundary."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .attacks._common import Bounds, check_count, check_inputs, check_labels, frozen
from .attacks.anpgd import line_search
from .attacks.ddn import ddn_search
from .attacks.pgd import pgd_steps
from .distributed import gather_shards, shard
from .losses import logit_margin
from .norms import bcast, get_norm, per_example


def _targeted_margin(target: Tensor):
    """``f_t − f_y`` for a fixed per-row target: PGD on it heads for one class's boundary."""
    def loss(logits: Tensor, y: Tensor) -> Tensor:
        return logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    return loss


def estimate_margin(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "l2",
    eps_max: float | Tensor = 10.0,
    steps: int = 100,
    search_steps: int = 20,
    restarts: int = 1,
    bounds: Bounds = (0.0, 1.0),
    targets: int = 9,
    rounds: int = 3,
    attack: str = "pgd",
) -> Tensor:
    """Upper bound on each example's margin ``min ‖δ‖ s.t. LM(x + δ, y) ≥ 0``.

    Misclassified examples get exactly 0. Every other value is the norm of a
    point verified to reach ``LM ≥ 0``; where none was found within
    ``eps_max`` the value is ``eps_max`` (read it as "at least ``eps_max``").

    Untargeted PGD on LM stalls at whichever class leads at its start, so
    each round runs a targeted PGD towards each of the ``targets`` runner-up
    classes (all of them in one batch) at the current estimate, and searches
    ``[0, estimate]`` along each direction for the first misclassified point.
    Later rounds and restarts shrink the estimate further; on linear models
    one round is already exact up to the search's resolution. The first
    restart starts PGD at ``x`` (no noise), later ones at random points.

    ``attack="ddn"`` (L2 only) uses the DDN minimal-norm attack instead, with
    ``steps`` iterations started at ``eps_max / 10``.
    """
    x, y, lo, hi = check_inputs(x, y, bounds)
    nrm = get_norm(norm)
    cap = per_example(eps_max, x, "eps_max")
    if bool((cap <= 0).any()):
        raise ValueError("eps_max must be > 0")
    for value, what in ((steps, "steps"), (search_steps, "search_steps"), (restarts, "restarts"),
                        (targets, "targets"), (rounds, "rounds")):
        check_count(value, what, 1)

    if attack not in ("pgd", "ddn"):
        raise ValueError(f"attack must be 'pgd' or 'ddn', got {attack!r}")
    if attack == "ddn":
        if nrm.name != "l2":
            raise ValueError("attack='ddn' measures L2 margins: use norm='l2'")
        r = ddn_search(model, x, y, steps=steps, init_norm=cap / 10, bounds=(lo, hi))
        return torch.where(r.found, torch.minimum(r.norm, cap), cap)

    with frozen(model):
        with torch.no_grad():
            logits = model(x)
        check_labels(logits, y)
        margin = torch.where(logit_margin(logits, y) >= 0, torch.zeros_like(cap), cap)
        idx = (margin > 0).nonzero().squeeze(1)
        k = min(targets, logits.shape[1] - 1)
        if idx.numel() == 0 or k == 0:
            return margin
        n = idx.numel()
        others = logits[idx].scatter(1, y[idx][:, None], float("-inf"))
        tgt = others.topk(k, dim=1).indices.T.reshape(-1)            # [k·n], target-major
        xs = x[idx].repeat(k, *([1] * (x.dim() - 1)))
        ys = y[idx].repeat(k)
        loss = _targeted_margin(tgt)
        best = cap[idx].clone()
        for restart in range(restarts):
            est = cap[idx].clone()
            for _ in range(rounds):
                radius = est.repeat(k)
                xa = pgd_steps(model, xs, ys, nrm, radius, steps, 2.5 * radius / steps, loss, restart > 0, lo, hi)
                u = (xa - xs) / bcast(radius, xs)
                no = torch.zeros_like(radius, dtype=torch.bool)
                eta, found = line_search(model, xs, ys, u, torch.zeros_like(radius), radius, no,
                                         logit_margin, search_steps, (lo, hi))
                dist = nrm.measure(torch.clamp(xs + bcast(eta, xs) * u, lo, hi) - xs)
                dist = torch.where(found, dist, torch.full_like(dist, float("inf")))
                est = torch.minimum(est, dist.reshape(k, n).amin(dim=0))
            best = torch.minimum(best, est)
        margin[idx] = best
    return margin


def margin_search(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps_max: float, batch_size: int = 500,
                  bounds: Bounds = (0.0, 1.0), distributed: bool = False) -> Tensor:
    """:func:`estimate_margin` over a large set in batches, with the evaluation's settings.

    50 PGD steps towards each of the 3 runner-up classes, 3 rounds: on
    trained networks further rounds tighten the estimate far more than
    further target classes (measured on the quick MMA model: mean margin
    0.336 with 3×3, 0.444 with 9 targets × 1 round, 0.345 with 9 × 2 at twice
    the cost).

    With ``distributed=True`` every rank passes the same ``x``, estimates its
    shard, and gets all ``len(x)`` margins back."""
    n = x.shape[0]
    if distributed:
        x, y = shard(x), shard(y)
    parts = [estimate_margin(model, x[s:s + batch_size], y[s:s + batch_size], norm=norm, eps_max=eps_max,
                             steps=50, search_steps=12, targets=3, rounds=3, bounds=bounds)
             for s in range(0, x.shape[0], batch_size)]
    m = torch.cat(parts) if parts else torch.zeros(0, device=x.device)
    return gather_shards(m, n) if distributed else m
