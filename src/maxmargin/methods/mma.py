"""Max-Margin Adversarial (MMA) training (Ding et al., ICLR 2020); OMMA is ``clean_weight=0``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.anpgd import anpgd_search
from ..attacks.ddn import ddn_search
from ..distributed import all_reduce, unwrap
from ..errors import UserError
from ..losses import soft_logit_margin
from ..options import Options, option
from .base import Method, register


@dataclass(frozen=True)
class MMAOptions(Options):
    d_max: float = option(0.45, "largest margin trained for: examples at or beyond it leave the loss", positive=True)
    eps_min: float = option(0.1, "initial radius of every example, and the floor of its AN-PGD start", min=0)
    steps: int = option(40, "PGD steps inside AN-PGD", positive=True)
    clean_weight: float = option(1.0 / 3.0, "weight c of the clean cross-entropy (MMA 1/3, OMMA 0)", min=0)
    search_steps: int = option(10, "line-search evaluations of AN-PGD", min=0)
    eps_max: float | None = option(None, "top of the line search (none = 1.05·d_max, as the official code)",
                                      positive=True)
    eps_inc: float | None = option(None, "none = official bracket [0, eps_max]; a number = the preprint's "
                                            "bracket [eps, eps + eps_inc]", min=0)
    refine: bool = option(False, "a second PGD at the radius found (preprint Algorithm 1)")
    search: str = option("bisect", "AN-PGD's line search: bisect (paper) or secant (fewer passes, same resolution)",
                         choices=("bisect", "secant"))
    inner: str = option("anpgd", "the minimal-perturbation attack: anpgd, or ddn (L2 only)", choices=("anpgd", "ddn"))
    ddn_gamma: float = option(0.05, "with inner=ddn: DDN's radius change per step", min=0)

    def check(self) -> None:
        if self.clean_weight > 1.0:
            raise UserError(f"option 'clean_weight' must lie in [0, 1], got {self.clean_weight}")
        if self.eps_min > self.d_max:
            raise UserError(f"option 'eps_min' ({self.eps_min}) must not exceed d_max ({self.d_max})")

    def check_run(self, norm: str) -> None:
        if self.inner == "ddn" and norm != "l2":
            raise UserError("inner=ddn is an L2 attack: set norm=l2 or inner=anpgd")


@register("mma")
class MMA(Method):
    """``L = c·CE_mean(clean) + (1 − c)·[Σ_{correct, ε_i < d_max} CE(x_i + δ_i) + Σ_{wrong} CE(x_i)] / B``.

    ``δ_i`` comes from AN-PGD started at each example's remembered radius
    ``max(eps_min, eps[i])``; afterwards every example of the batch stores its
    new radius (misclassified ones store 0). The memory ``eps`` is one float
    tensor indexed by dataset index, on the training device.

    ``eps_max`` (the search's top) defaults to ``1.05·d_max`` as in the
    official code; ``eps_inc``/``refine`` select the preprint's Algorithm 1,
    ``search="secant"`` the cheaper line search. ``inner="ddn"`` (L2 only)
    replaces AN-PGD by DDN started at the remembered radius: any attack that
    approximates the shortest successful perturbation fits MMA.

    As in the official trainer, the bracketed term comes from one train-mode
    forward over the mixed batch (the adversarial point for every correct
    example, hinge-dropped or not, the clean point for the others), masked:
    with BatchNorm its batch statistics are those of all ``B`` points.
    """

    Options = MMAOptions
    legacy_keys = {"attack_steps": "steps"}

    def __init__(self, norm: str, d_max: float, eps_min: float, steps: int, num_examples: int,
                 clean_weight: float = 1.0 / 3.0, search_steps: int = 10, eps_max: float | None = None,
                 eps_inc: float | None = None, refine: bool = False, search: str = "bisect",
                 inner: str = "anpgd", ddn_gamma: float = 0.05, device: torch.device | str = "cpu") -> None:
        super().__init__()
        # the checks, in one place
        MMAOptions(d_max, eps_min, steps, clean_weight, search_steps, eps_max, eps_inc, refine, search, inner,
                   ddn_gamma).check_run(norm)
        self.inner, self.ddn_gamma = inner, ddn_gamma
        self.norm, self.d_max, self.eps_min, self.steps = norm, d_max, eps_min, steps
        self.clean_weight, self.search_steps = clean_weight, search_steps
        self.eps_max = 1.05 * d_max if eps_max is None else eps_max
        self.eps_inc, self.refine, self.search = eps_inc, refine, search
        self.eps = torch.zeros(num_examples, device=device)
        # step of each example's last update (-1: never): lets ranks merge their memories
        self.updated = torch.full((num_examples,), -1, dtype=torch.int64, device=device)

    def metrics(self) -> dict[str, float]:
        return {"mean_eps": float(self.eps.mean())}

    def to(self, device) -> MMA:
        self.eps = self.eps.to(device)
        self.updated = self.updated.to(device)
        return self

    def sync(self) -> None:
        """Merge the ranks' memories: for every example, the radius of its latest update.

        Within one step the ranks' shards are disjoint, so an example's latest
        update comes from one rank, or every rank already holds it from the
        last merge; averaging over the holders gives that value either way.
        """
        latest = all_reduce(self.updated.clone(), "max")
        mine = (self.updated == latest) & (latest >= 0)
        total = all_reduce(torch.where(mine, self.eps, torch.zeros_like(self.eps)), "sum")
        holders = all_reduce(mine.to(self.eps.dtype), "sum")
        self.eps = torch.where(holders > 0, total / holders.clamp_min(1), torch.zeros_like(total))
        self.updated = latest

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        b = x.shape[0]
        logits = model(x)
        ce_clean = F.cross_entropy(logits, y, reduction="none")
        correct = soft_logit_margin(logits.detach(), y) < 0
        cidx = correct.nonzero().squeeze(1)

        new_eps = torch.zeros(b, device=x.device)
        counted = ~correct                                # rows of the mixed batch that enter the loss
        x_mix = x
        if cidx.numel():
            start = torch.clamp(self.eps[index[cidx]], min=self.eps_min)
            if self.inner == "ddn":
                d = ddn_search(unwrap(model), x[cidx], y[cidx], steps=self.steps, gamma=self.ddn_gamma,
                               init_norm=start)
                x_adv, eps, found = d.x_adv, d.norm, d.found
            else:
                r = anpgd_search(unwrap(model), x[cidx], y[cidx], self.norm, eps_init=start,
                                 eps_max=self.eps_max, steps=self.steps, search_steps=self.search_steps,
                                 eps_inc=self.eps_inc, refine=self.refine, criterion="slm", search=self.search,
                                 clean_logits=logits[cidx].detach())
                x_adv, eps, found = r.x_adv, r.eps, r.found
            new_eps[cidx] = eps
            x_mix = x.index_put((cidx,), x_adv.to(x.dtype))
            counted = counted.index_put((cidx,), found & (eps < self.d_max))
        ce_mix = F.cross_entropy(model(x_mix), y, reduction="none")
        adv_sum = torch.where(counted, ce_mix, torch.zeros_like(ce_mix)).sum()
        n_adv = int((counted & correct).sum())
        self.eps[index] = new_eps
        self.updated[index] = self.step
        c = self.clean_weight
        loss = c * ce_clean.mean() + (1 - c) * adv_sum / b
        stats = {
            "loss": float(loss.detach()),
            "acc": float((logits.argmax(1) == y).float().mean()),
            "eps": float(new_eps[cidx].mean()) if cidx.numel() else 0.0,
            "adv_frac": n_adv / b,
        }
        return loss, stats

    def state_dict(self) -> dict[str, Any]:
        return {"eps": self.eps.detach().cpu().clone(), "updated": self.updated.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        eps = state["eps"]
        if eps.shape != self.eps.shape:
            raise ValueError(f"MMA memory has {eps.shape[0]} examples, this dataset {self.eps.shape[0]}")
        self.eps = eps.to(self.eps.device, self.eps.dtype).clone()
        if "updated" in state:
            self.updated = state["updated"].to(self.updated.device).clone()
