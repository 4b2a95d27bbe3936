"""Robustness evaluation: protocols, transfer, per-example worst case over attacks.

The ε grids and other per-norm, per-dataset settings are in :mod:`maxmargin.norm_tables`.

An example counts as robust at ε only if it is classified correctly and every
attack of the protocol failed on it. Attacks run in sequence, each on the
examples still robust, so ``by_attack`` holds the robust accuracy *after* each
attack (monotone along the sequence) and ``attacks`` how many examples each
one broke that all earlier ones had missed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attacks import fgsm, pgd
from .attacks._common import Bounds, check_inputs, check_labels, frozen
from .diagnostics import certificate_flags, dead_gradient_share, masking_flags
from .errors import UserError
from .margin import margin_search
from .norm_tables import AUTOATTACK_NORMS, paper_step_ratio, universal_eps
from .norms import Norm, get_norm, per_example, radius_grid

PROTOCOLS = ("quick", "paper", "autoattack")


@dataclass
class AttackSpec:
    """One attack of a protocol; ``run(x, y, eps_vector) -> x_adv`` on the evaluated model's inputs."""

    name: str
    steps: int
    restarts: int
    source: str
    run: Callable[[Tensor, Tensor, Tensor], Tensor]

    @property
    def key(self) -> str:
        """Name in ``by_attack``: transfer attacks carry their source model."""
        return self.name if self.source in ("white-box", "gradient-free") else f"{self.name}:{self.source}"


@dataclass
class EvalResult:
    eps: list[float]
    clean_accuracy: float
    robust_accuracy: dict[float, float]
    robust: Tensor                                   # bool [len(eps), N]
    by_attack: dict[str, dict[float, float]]
    attacks: list[dict[str, Any]]                   # Table-1 rows
    flags: list[str] = field(default_factory=list)
    protocol: str = "quick"
    norm: str = "linf"
    margins: Tensor | None = None
    certified: Tensor | None = None                  # per-example certified radius (lower bound), if asked
    certify_method: str | None = None
    reported_eps: list[float] | None = None          # the radii averaged (None: all of eps)

    @property
    def averaged(self) -> list[float]:
        """Radii that enter the averages: those below the one where every input can reach the box's middle
        (MNIST L∞ 0.5 is evaluated as a gradient-masking check, not a result; the paper's tables stop at 0.4)."""
        return self.eps if self.reported_eps is None else self.reported_eps

    @property
    def average_robust_accuracy(self) -> float:
        return sum(self.robust_accuracy[e] for e in self.averaged) / max(len(self.averaged), 1)

    @property
    def avg_acc(self) -> float:
        """The MMA paper's AvgAcc: the mean of the clean and the robust accuracies over the grid."""
        accs = [self.clean_accuracy] + [self.robust_accuracy[e] for e in self.averaged]
        return sum(accs) / len(accs)

    def margin_cdf_accuracy(self) -> dict[float, float] | None:
        """Robust accuracy the margins predict: the fraction with margin > ε."""
        if self.margins is None:
            return None
        return {e: float((self.margins > e).float().mean()) for e in self.eps}

    def certified_accuracy(self) -> dict[float, float] | None:
        """Fraction of examples proven robust at each ε: certified radius ≥ ε (never above robust accuracy)."""
        if self.certified is None:
            return None
        n = max(int(self.certified.numel()), 1)
        return {e: int((self.certified >= e).sum()) / n for e in self.eps}

    def to_dict(self) -> dict[str, Any]:
        d = {
            "protocol": self.protocol, "norm": self.norm, "eps": self.eps, "n": int(self.robust.shape[1]),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": {str(e): a for e, a in self.robust_accuracy.items()},
            "average_robust_accuracy": self.average_robust_accuracy, "avg_acc": self.avg_acc,
            "averaged_eps": self.averaged,
            "by_attack": {k: {str(e): a for e, a in v.items()} for k, v in self.by_attack.items()},
            "attacks": self.attacks, "flags": self.flags,
        }
        if self.margins is not None:
            m = self.margins
            d["margin"] = {"mean": float(m.mean()), "median": median(m),
                           "quantiles": {str(q): float(torch.quantile(m, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
                           "cdf_accuracy": {str(e): a for e, a in (self.margin_cdf_accuracy() or {}).items()}}
        if self.certified is not None:
            c = self.certified.float().cpu()
            d["certified"] = {"method": self.certify_method, "mean": float(c.mean()), "median": median(c),
                              "accuracy": {str(e): a for e, a in (self.certified_accuracy() or {}).items()}}
        return d


def median(t: Tensor) -> float:
    """The median as the 0.5 quantile (the mean of the two middle values for an even count), the definition
    every reported median and quantile table uses (``Tensor.median`` would give the lower middle one)."""
    return float(torch.quantile(t.detach().float().cpu(), 0.5))


def build_protocol(model: nn.Module, protocol: str, norm: str, shape: tuple[int, ...],
                   sources: Sequence[nn.Module], bounds: Bounds,
                   source_names: Sequence[str] | None = None) -> list[AttackSpec]:
    """The attacks of a protocol, in the order they run."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    names = list(source_names or [f"source{i}" for i in range(len(sources))])

    def white(loss: str, steps: int, restarts: int, ratio: float | None) -> Callable:
        def run(x: Tensor, y: Tensor, eps: Tensor) -> Tensor:
            step = None if ratio is None else eps * ratio
            return pgd(model, x, y, norm=norm, eps=eps, steps=steps, step_size=step, loss=loss,
                       restarts=restarts, bounds=bounds)
        return run

    if protocol == "quick":
        return [AttackSpec("pgd-ce", 50, 1, "white-box", white("ce", 50, 1, None)),
                AttackSpec("pgd-cw", 50, 1, "white-box", white("cw", 50, 1, None))]
    if protocol == "autoattack":
        return [AttackSpec("autoattack", 0, 1, "white-box", _autoattack(model, norm, bounds))]

    ratio = paper_step_ratio(norm, shape)
    specs = [AttackSpec("pgd-ce", 100, 5, "white-box", white("ce", 100, 5, ratio)),
             AttackSpec("pgd-cw", 100, 5, "white-box", white("cw", 100, 5, ratio)),
             AttackSpec("fgsm", 1, 1, "white-box",
                        lambda x, y, eps: fgsm(model, x, y, norm=norm, eps=eps, bounds=bounds))]
    for src, name in zip(sources, names):
        def transfer(x: Tensor, y: Tensor, eps: Tensor, src: nn.Module = src) -> Tensor:
            return pgd(src, x, y, norm=norm, eps=eps, steps=100, step_size=eps * ratio, loss="ce", bounds=bounds)
        specs.append(AttackSpec("transfer-pgd", 100, 1, name, transfer))
    specs.append(AttackSpec("random-search", 0, 20, "gradient-free",
                            lambda x, y, eps: random_search(model, x, y, norm, eps, 20, bounds)))
    return specs


def random_search(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: Tensor, tries: int,
                  bounds: Bounds) -> Tensor:
    """Gradient-free check: ``tries`` random points on the ε-sphere; returns a misclassified one if any."""
    x, y, lo, hi = check_inputs(x, y, bounds, model)
    nrm = get_norm(norm)
    best = x.clone()
    hit = torch.zeros_like(y, dtype=torch.bool)
    with frozen(model), torch.no_grad():
        for _ in range(tries):
            d = nrm.direction(torch.randn_like(x)) * eps.view(-1, *([1] * (x.dim() - 1)))
            cand = torch.clamp(x + nrm.project(d, eps), lo, hi)
            new = (model(cand).argmax(1) != y) & ~hit
            best[new] = cand[new]
            hit |= new
    return best


def _autoattack(model: nn.Module, norm: str, bounds: Bounds) -> Callable:
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise UserError("protocol 'autoattack' needs the optional package: pip install -e \".[autoattack]\"") from None
    if tuple(bounds) != (0.0, 1.0):
        raise UserError("AutoAttack assumes inputs in [0, 1]")

    def run(x: Tensor, y: Tensor, eps: Tensor) -> Tensor:
        e = float(eps.max())
        if not torch.allclose(eps, torch.full_like(eps, e)):
            raise UserError("AutoAttack takes one ε per call")
        # AutoAttack reseeds torch with its own seed: hand it ours (what `eval --seed` set), not a constant,
        # so that --seed is honoured rather than silently ignored
        aa = AutoAttack(model, norm=AUTOATTACK_NORMS[norm], eps=e, version="standard",
                        seed=torch.initial_seed() % 2**31, device=str(x.device))
        with frozen(model):
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
        return x_adv.detach()

    return run


@dataclass
class AttackState:
    """How far :meth:`EvalPlan.attack` got: enough to continue it with the same outcome.

    ``stage`` is filled in up to the position: at the ``eps_index``-th radius
    the ``attack_index``-th attack has attacked the examples of ``alive`` (the
    ones still robust when that pair started) before ``batch_start``.
    ``alive`` is ``None`` before the pair started. ``margins``: the ones the
    margin attack uses (``None`` without it); ``rng``: the torch generators'
    states at the position (``"cpu"``, and ``"cuda"`` when the examples are on a GPU).
    """

    stage: Tensor
    eps_index: int = 0
    attack_index: int = 0
    batch_start: int = 0
    alive: Tensor | None = None
    margins: Tensor | None = None
    rng: dict[str, Tensor] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain tensors, numbers and ``None`` on the CPU (``torch.load(weights_only=True)`` reads them back)."""
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu().clone()
        return {"stage": cpu(self.stage), "eps_index": self.eps_index, "attack_index": self.attack_index,
                "batch_start": self.batch_start, "alive": cpu(self.alive), "margins": cpu(self.margins),
                "rng": {k: cpu(v) for k, v in self.rng.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str = "cpu") -> AttackState:
        """The state :meth:`as_dict` saved, its tensors on ``device`` (the generator states stay on the CPU)."""
        def to(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)
        return cls(stage=d["stage"].to(device), eps_index=int(d["eps_index"]), attack_index=int(d["attack_index"]),
                   batch_start=int(d["batch_start"]), alive=to(d["alive"]), margins=to(d["margins"]),
                   rng=dict(d["rng"]))


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The states of the torch generators the attacks draw from on ``device``."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_resume(state: AttackState, margins: Tensor | None, n: int, n_eps: int, n_attacks: int) -> None:
    """A saved state must belong to this plan and these examples (the caller checks the settings)."""
    if tuple(state.stage.shape) != (n, n_eps):
        raise ValueError(f"resume: the saved stage has shape {tuple(state.stage.shape)}, expected {(n, n_eps)}")
    if not (0 <= state.eps_index < n_eps and 0 <= state.attack_index < n_attacks) or "cpu" not in state.rng:
        raise ValueError("resume: the saved position or generator state does not fit this plan")
    if margins is not None and (state.margins is None or not torch.equal(margins, state.margins)):
        raise ValueError("resume: margins given differ from the ones the interrupted call used")


@dataclass
class EvalPlan:
    """An evaluation fixed before any example is attacked: the checked grid and the protocol's attacks.

    :func:`evaluate` is ``plan_evaluation`` → :meth:`attack` → :meth:`result`.
    :meth:`attack` works per example (an example's outcome depends on that
    example and the random draws alone, never on the others), so a caller can
    split the examples across processes (:func:`maxmargin.sharding.map_examples`)
    and put the pieces back together before :meth:`result`.
    """

    model: nn.Module
    protocol: str
    norm: str
    eps: list[float]
    attacks: list[AttackSpec]
    batch_size: int
    bounds: Bounds
    margin_attack: bool

    @property
    def stages(self) -> list[str]:
        """The ``by_attack`` keys, in the order the attacks run (the margin search last)."""
        return [spec.key for spec in self.attacks] + (["margin-search"] if self.margin_attack else [])

    @property
    def margin_cap(self) -> float:
        """Cap of the margin search behind the margin attack: twice the largest ε (1 if every ε is 0)."""
        return 2 * max(self.eps) if max(self.eps) > 0 else 1.0

    def attack(self, x: Tensor, y: Tensor, margins: Tensor | None = None, progress: bool = False,
               resume: AttackState | None = None,
               on_progress: Callable[[AttackState], None] | None = None) -> tuple[Tensor, Tensor | None]:
        """Run every attack at every ε on the examples still robust; returns ``(stage, margins)``.

        ``stage`` (int64 ``[N, len(eps)]``) says where each example stopped
        being robust at each ε: 0 misclassified, ``k + 1`` first broken by
        ``stages[k]``, ``len(stages) + 1`` survived every attack. ``margins``
        are the ones given, or with ``margin_attack`` and none given, the ones
        the margin search found here.

        ``on_progress`` is called with the :class:`AttackState` once before the
        first attacked batch and again after every one (it must copy or save
        what it keeps: the state changes on). ``resume``, such a state saved
        by an interrupted call with the same plan, examples and ``margins``,
        continues that call (updating the state in place) and returns exactly
        what the uninterrupted call would have.
        """
        x, y, lo, hi = check_inputs(x, y, self.bounds, self.model)
        nrm = get_norm(self.norm)
        n, bs = x.shape[0], self.batch_size
        survived = len(self.stages) + 1
        if resume is None:
            correct = torch.zeros(n, dtype=torch.bool, device=x.device)
            with frozen(self.model), torch.no_grad():
                for s in range(0, n, bs):
                    logits = self.model(x[s:s + bs])
                    check_labels(logits, y[s:s + bs])
                    correct[s:s + bs] = logits.argmax(1) == y[s:s + bs]
            if self.margin_attack and margins is None:
                margins = margin_search(self.model, x, y, self.norm, self.margin_cap, bs, bounds=(lo, hi))
            state = AttackState(torch.where(correct, survived, 0).unsqueeze(1).repeat(1, len(self.eps)),
                                margins=margins)
            if on_progress is not None:
                state.rng = rng_state(x.device)
                on_progress(state)
        else:
            state = resume
            _check_resume(state, margins, n, len(self.eps), len(self.attacks))
            margins = state.margins
            set_rng_state(state.rng, x.device)

        per_eps = len(self.attacks)
        bar = tqdm(total=len(self.eps) * per_eps, initial=state.eps_index * per_eps + state.attack_index,
                   disable=not progress, desc=f"eval ({self.protocol})", dynamic_ncols=True)
        first = True    # the pair the state stands at: on resume its batches of state.alive are partly done
        for i in range(state.eps_index, len(self.eps)):
            e = self.eps[i]
            for k in range(state.attack_index if first else 0, per_eps):
                spec = self.attacks[k]
                bar.set_description(f"{spec.key} ({self.norm}) at ε={e:.4g}")
                if e > 0:    # at ε = 0 there is nothing to attack: robust means correct
                    if not first or state.alive is None:
                        # fixed for the whole pair: recomputing it part way would shift the batches
                        state.alive = (state.stage[:, i] == survived).nonzero().squeeze(1)
                        state.batch_start = 0
                    state.eps_index, state.attack_index = i, k
                    self._attack_alive(spec, x, y, state, nrm, on_progress)
                first = False
                bar.update(1)
            if self.margin_attack:
                assert margins is not None  # given, or found by margin_search above
                state.stage[(state.stage[:, i] == survived) & (margins <= e), i] = len(self.attacks) + 1
        bar.close()
        return state.stage, margins

    def _attack_alive(self, spec: AttackSpec, x: Tensor, y: Tensor, state: AttackState, nrm: Norm,
                      on_progress: Callable[[AttackState], None] | None) -> None:
        """Attack ``x[state.alive]`` from ``state.batch_start`` on, ``batch_size`` at a time, marking the broken."""
        lo, hi = self.bounds
        i, k, alive, bs = state.eps_index, state.attack_index, state.alive, self.batch_size
        assert alive is not None  # set when the pair started
        eps = self.eps[i]
        for s in range(state.batch_start, alive.numel(), bs):
            idx = alive[s:s + bs]
            xs, ys = x[idx], y[idx]
            x_adv = spec.run(xs, ys, per_example(eps, xs))
            _check_valid(x_adv, xs, nrm, eps, lo, hi, spec.name)
            with frozen(self.model), torch.no_grad():
                fooled = self.model(x_adv).argmax(1) != ys
            state.stage[idx[fooled], i] = k + 1
            state.batch_start = s + bs
            if on_progress is not None:
                state.rng = rng_state(x.device)
                on_progress(state)

    def result(self, x: Tensor, y: Tensor, stage: Tensor, margins: Tensor | None = None,
               certified: Tensor | None = None, certify_method: str | None = None) -> EvalResult:
        """The :class:`EvalResult` of all examples from :meth:`attack`'s ``stage``, with the masking checks."""
        x, y, lo, hi = check_inputs(x, y, self.bounds, self.model)
        grid, names, n = self.eps, self.stages, max(x.shape[0], 1)
        survived = len(names) + 1
        # a later stage with the same key (two transfer sources of one name) overwrites an earlier one
        newly = {key: [int((stage[:, i] == k + 1).sum()) for i in range(len(grid))] for k, key in enumerate(names)}
        after = {key: {e: int((stage[:, i] > k + 1).sum()) / n for i, e in enumerate(grid)}
                 for k, key in enumerate(names)}
        robust = (stage == survived).T.contiguous()
        described = [(spec.name, spec.steps, spec.restarts, spec.source) for spec in self.attacks]
        described += [("margin-search", 50, 1, "white-box")] if self.margin_attack else []
        rows = [{"attack": name, "eps": e, "steps": steps, "restarts": restarts, "source": source,
                 "newly_broken": newly[key][i], "accuracy_after": after[key][e]}
                for key, (name, steps, restarts, source) in zip(names, described) for i, e in enumerate(grid)]
        res = EvalResult(eps=grid, clean_accuracy=float((stage[:, 0] > 0).float().mean()),
                         robust_accuracy={e: int(robust[i].sum()) / n for i, e in enumerate(grid)},
                         robust=robust.cpu(), by_attack=after, attacks=rows, protocol=self.protocol, norm=self.norm,
                         margins=None if margins is None else margins.detach().cpu(),
                         certified=None if certified is None else certified.detach().cpu(),
                         certify_method=certify_method)
        shape = tuple(x.shape[1:])
        ueps = universal_eps(self.norm, shape, (lo, hi))
        below = [e for e in grid if e < ueps]
        res.reported_eps = below if below and len(below) < len(grid) else None
        res.flags = masking_flags(res.robust_accuracy, res.attacks, self.norm, y, shape, (lo, hi),
                                  res.margin_cdf_accuracy(), dead_gradient_share(self.model, x, y, self.batch_size))
        if res.certified is not None:
            res.flags += certificate_flags(res.robust, res.certified, grid)
        return res


def plan_evaluation(model: nn.Module, input_shape: tuple[int, ...], norm: str = "linf",
                    eps: Sequence[float] | float = (0.1, 0.2, 0.3), protocol: str = "quick",
                    sources: Sequence[nn.Module] = (),
                    batch_size: int = 500, bounds: Bounds = (0.0, 1.0), margin_attack: bool | None = None,
                    source_names: Sequence[str] | None = None) -> EvalPlan:
    """Check the settings of an evaluation and build its protocol (arguments as in :func:`evaluate`)."""
    get_norm(norm)
    grid = radius_grid(eps, "eps")
    if batch_size <= 0:
        raise ValueError("batch_size must be > 0")
    bounds = (float(bounds[0]), float(bounds[1]))
    specs = build_protocol(model, protocol, norm, tuple(input_shape), sources, bounds, source_names)
    return EvalPlan(model, protocol, norm, grid, specs, batch_size, bounds,
                    protocol == "paper" if margin_attack is None else bool(margin_attack))


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str = "linf",
    eps: Sequence[float] | float = (0.1, 0.2, 0.3),
    protocol: str = "quick",
    sources: Sequence[nn.Module] = (),
    batch_size: int = 500,
    bounds: Bounds = (0.0, 1.0),
    margins: Tensor | None = None,
    margin_attack: bool | None = None,
    source_names: Sequence[str] | None = None,
    progress: bool = False,
    certified: Tensor | None = None,
    certify_method: str | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``(x, y)`` at every ε of the grid under ``protocol``.

    ``margins`` (per-example, e.g. from :func:`estimate_margin`) enter the
    gradient-masking checks; with ``margin_attack`` (default: on for the
    paper protocol) a targeted minimal-perturbation search runs as one more
    attack, and every example whose verified adversarial point lies within ε
    counts as broken.

    ``certified`` (per-example certified radii, e.g. from
    :func:`maxmargin.certify.certified_margin`) adds the certified accuracy at
    each ε, and a flag if any attack broke an example certified at that ε.

    All of it runs in this process; ``maxmargin eval`` splits the examples
    across ``torchrun`` ranks with :class:`EvalPlan`'s stages.
    """
    x, y, lo, hi = check_inputs(x, y, bounds, model)
    if x.shape[0] == 0:
        raise ValueError("x holds no examples: accuracies over an empty set are undefined")
    for name, per in (("margins", margins), ("certified", certified)):
        if per is not None and per.shape != (x.shape[0],):
            raise ValueError(f"{name} must have shape ({x.shape[0]},), got {tuple(per.shape)}")
    plan = plan_evaluation(model, tuple(x.shape[1:]), norm, eps, protocol, sources, batch_size, (lo, hi),
                           margin_attack, source_names)
    stage, margins = plan.attack(x, y, margins, progress)
    return plan.result(x, y, stage, margins, certified, certify_method)


def _check_valid(x_adv: Tensor, x: Tensor, nrm, eps: float, lo: float, hi: float, name: str) -> None:
    """Refuse to count a point outside the threat model: a wrong number is worse than none."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {name} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    dist = nrm.measure(x_adv - x)
    if bool((dist > eps * (1 + 1e-4) + 1e-5).any()) or float(x_adv.min()) < lo - 1e-6 or float(x_adv.max()) > hi + 1e-6:
        raise RuntimeError(f"attack {name} left the ε-ball or the box (max distance {float(dist.max()):.6g} > {eps})")
