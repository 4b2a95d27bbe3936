"""The bound driver: interval bounds forwards, linear bounds backwards, over a ball ∩ box region.

It knows nothing about particular ops: it calls the methods of
:class:`BoundOp` and reads its flags (``linear``, ``relaxed``, ``pointwise``,
``tunable``, ``fan_in``). The graph's node 0 is the input.

The methods, loosest and cheapest first (:data:`METHODS`):

* ``"ibp"``: interval bounds, the specification folded into the linear ops
  after the last non-linearity;
* ``"crown-ibp"``: backward linear bounds for the margins; intermediate
  (pre-activation) bounds by CROWN only where that is cheap
  (:data:`CROWN_INTERMEDIATE_BUDGET`), by intervals elsewhere;
* ``"crown"``: full CROWN: every intermediate bound a relaxation uses comes
  from a backward pass too, but only the bounds that some relaxation reads
  (:meth:`BoundOp.needs_bounds`: ReLU's unstable neurons; behind a ReLU, the
  entries max pooling can take), in chunks of rows that bound the memory
  (:data:`CHUNK_ENTRIES`);
* ``"alpha-crown"``: full CROWN's intermediate bounds, then the lower ReLU
  slopes of the margins' backward pass optimized by projected Adam
  (:data:`ALPHA_STEPS` steps), one set per example and margin.

Every bound is intersected with the interval one, so each method is never
looser than IBP. CROWN's margin bound is not monotone in the intermediate
bounds (tighter ones change the relaxation each neuron gets, and with it the
signs further down), so ``"crown"`` takes the better of its own and
CROWN-IBP's bound, and α-CROWN keeps the best of all its steps and CROWN's:
per example and margin, α-CROWN ≥ CROWN ≥ CROWN-IBP ≥ IBP by construction.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor

from ..norms import Norm, bcast
from .graph import Node
from .registry import Interval, TunableOp

# CROWN bounds for an intermediate layer cost (2 × its width) backward passes
# through everything beneath it. Above this many multiply-adds per example and
# bound evaluation (LeNet5's or SmallCNN's FC layer over their convolutions:
# 1e8-1e10; MLP-800's second layer: 2e9) the interval bound is used instead,
# which keeps 500 MNIST digits within minutes on two CPU cores; small MLPs
# (784-100-100-10: 2e7) get CROWN all the way.
CROWN_INTERMEDIATE_BUDGET = 3e7

METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")

# Full CROWN's rows per backward pass: rows × examples × the widest node the pass goes through stays
# under this many entries (64 MB in float32); a pass holds a few such tensors at once (ReLU's and
# max pooling's backward steps make 4-8), so LeNet5 stays well under 1 GB per chunk.
CHUNK_ENTRIES = 2 ** 24

# α-CROWN: projected Adam on the lower ReLU slopes; auto_LiRPA's defaults are 20 steps at 0.1 too.
ALPHA_STEPS = 20
ALPHA_LR = 0.1


@dataclass
class Region:
    """The ball of per-example radius ``r`` around ``x0`` intersected with the box ``[lo, hi]``."""

    x0: Tensor
    r: Tensor
    norm: Norm
    lo: float
    hi: float

    def box(self) -> Interval:
        """The elementwise bounds of the region: the ball's bounding box clipped to the box."""
        r = bcast(self.r, self.x0)
        return (self.x0 - r).clamp(self.lo, self.hi), (self.x0 + r).clamp(self.lo, self.hi)

    def lower(self, a: Tensor) -> Tensor:
        """``min a·x`` over the region for ``a`` of shape ``[B, S, *x]``: max of the ball's and the box's bound."""
        b, s = a.shape[:2]
        flat = a.reshape(b, s, -1)
        center = (flat * self.x0.reshape(b, 1, -1)).sum(2)
        ball = center - self.r[:, None] * self.norm.dual(flat.reshape(b * s, -1)).reshape(b, s)
        return torch.maximum(ball, interval_lower(a, self.box()))


def interval_lower(a: Tensor, box: Interval) -> Tensor:
    """``min a·z`` over ``lo ≤ z ≤ hi``; ``a``: ``[B, S, *z]``, ``box``: ``[B, *z]`` each."""
    b, s = a.shape[:2]
    flat = a.reshape(b, s, -1)
    lo, hi = (t.reshape(b, 1, -1) for t in box)
    return (flat * (lo + hi) / 2).sum(2) - (flat.abs() * (hi - lo) / 2).sum(2)


def _backward(nodes: list[Node], start: int, a: Tensor, bounds: Sequence[Interval | None], region: Region,
              relax: bool, params: dict[int, Tensor] | None = None) -> Tensor:
    """Lower bound of ``a · node[start]`` (``a``: ``[B, S, *shape]``) as ``[B, S]``.

    Walks the graph backwards through linear ops (affine maps, sums); with
    ``relax`` through every op's relaxation too. Wherever it stops (an op
    without linear bounds, or a relaxed op when ``relax`` is off), the
    coefficients are concretized against that node's interval bounds.
    ``params``: free relaxation parameters of tunable nodes (α-CROWN), by node.
    """
    b, s = a.shape[:2]
    pending: dict[int, Tensor] = {start: a}
    total = torch.zeros(b, s, dtype=a.dtype, device=a.device)
    for i in range(start, -1, -1):
        if i not in pending:
            continue
        a = pending.pop(i)
        node = nodes[i]
        if not node.inputs:                          # the model input: the region itself
            total = total + region.lower(a)
            continue
        step = None
        if relax or node.op.linear:
            ins = [bounds[j] for j in node.inputs]
            shapes = [nodes[j].shape for j in node.inputs]
            if params is not None and i in params:
                step = cast(TunableOp, node.op).backward_tuned(a, ins, shapes, params[i])  # type: ignore[arg-type]
            else:
                step = node.op.backward(a, ins, shapes)  # type: ignore[arg-type]
        if step is None:
            total = total + interval_lower(a, bounds[i])  # type: ignore[arg-type]
            continue
        coefs, const = step
        for j, coef in zip(node.inputs, coefs):
            pending[j] = pending[j] + coef if j in pending else coef
        if const is not None:
            total = total + const
    return total


def _cone(nodes: list[Node], k: int) -> set[int]:
    """Node ``k`` and every node it depends on."""
    seen, stack = set(), [k]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(nodes[i].inputs)
    return seen


def _cone_cost(nodes: list[Node], k: int) -> float:
    """Multiply-adds per example of a CROWN bound of node ``k``: 2·width rows through everything below it."""
    return 2.0 * nodes[k].numel * sum(nodes[i].numel * nodes[i].fan_in for i in _cone(nodes, k))


def _consumers(nodes: list[Node]) -> dict[int, list[int]]:
    """For every node whose interval bounds feed a relaxation: the relaxed nodes reading it."""
    out: dict[int, list[int]] = {}
    for k, n in enumerate(nodes):
        if n.op.relaxed:
            for j in n.inputs:
                out.setdefault(j, []).append(k)
    return out


def _needs(nodes: list[Node], i: int, box: Interval, consumers: dict[int, list[int]]) -> tuple[Tensor, Tensor]:
    """Which of node ``i``'s lower and upper bounds a relaxation downstream reads.

    Its relaxed readers say (:meth:`BoundOp.needs_bounds`); a pointwise reader
    (ReLU) passes on what its own relaxed readers need of its output (max
    pooling after a ReLU reads the active neurons' bounds too). Pointwise ops
    are monotone increasing, so an output's lower (upper) bound is the image
    of the input's; where the output interval is a point (a dead ReLU) no
    input bound can tighten it.
    """
    lo = torch.zeros_like(box[0], dtype=torch.bool)
    hi = lo.clone()
    for c in consumers[i]:
        op = nodes[c].op
        cl, ch = op.needs_bounds(*box)
        lo, hi = lo | cl, hi | ch
        if op.pointwise and c in consumers:
            out = op.interval([box])
            moves = out[0] < out[1]
            for d in consumers[c]:
                dl, dh = nodes[d].op.needs_bounds(*out)
                lo, hi = lo | (dl & moves), hi | (dh & moves)
    return lo, hi


def _input_view(views: dict[int, Region], node: Node) -> Region | None:
    """The input region as ``node``'s one input sees it, when that input is the model input or a reshape of it."""
    return views.get(node.inputs[0]) if len(node.inputs) == 1 else None


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")


def _intersect(box: Interval, prior: Interval | None) -> Interval:
    return box if prior is None else (torch.maximum(box[0], prior[0]), torch.minimum(box[1], prior[1]))


def layer_bounds(nodes: list[Node], region: Region, method: str,
                 prior: Sequence[Interval | None] | None = None) -> list[Interval]:
    """Interval bounds of every node, tightened by backward bounds as ``method`` says (see :data:`METHODS`).

    ``prior``: bounds known to hold over this region (e.g. computed over a
    larger ball; ``±inf`` where unknown), intersected with every node's.
    ``"crown"`` here is the same as ``"alpha-crown"`` (α only tunes the margins).
    """
    _check_method(method)
    bounds: list[Interval | None] = [None] * len(nodes)
    consumers = _consumers(nodes) if method != "ibp" else {}
    full = method in ("crown", "alpha-crown")
    # the input region in the shape of the input and of every reshape of it (a flatten before the first layer)
    views: dict[int, Region] = {0: region}
    for i, node in enumerate(nodes):
        op = node.op
        seen = _input_view(views, node)
        if not node.inputs:
            box = op.interval([region.box()])
        elif seen is not None:
            box = op.input_interval(seen)
            if op.is_reshape:
                views[i] = Region(seen.x0.reshape(-1, *node.shape), seen.r, seen.norm, seen.lo, seen.hi)
        else:
            box = op.interval([bounds[j] for j in node.inputs])  # type: ignore[misc]
        bounds[i] = box = _intersect(box, None if prior is None else prior[i])
        # an affine map of the input is already exact per neuron over the ball (and boxed)
        exact = op.linear and seen is not None
        if i not in consumers or exact:
            continue
        if full:
            # an activation's output: its interval is exact given its input's, no row can beat it
            if not op.pointwise:
                bounds[i] = _crown_rows(nodes, i, *_needs(nodes, i, box, consumers), bounds, region)
        elif _cone_cost(nodes, i) <= CROWN_INTERMEDIATE_BUDGET:
            lo, hi = box
            b, n = lo.shape[0], node.numel
            eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
            a = torch.cat([eye, -eye]).reshape(1, 2 * n, *node.shape).expand(b, -1, *node.shape)
            low = _backward(nodes, i, a, bounds, region, relax=True)
            lo = torch.maximum(lo, low[:, :n].reshape(lo.shape))
            hi = torch.minimum(hi, -low[:, n:].reshape(hi.shape))
            bounds[i] = (lo, hi)
    return bounds  # type: ignore[return-value]


def _crown_rows(nodes: list[Node], i: int, need_lo: Tensor, need_hi: Tensor, bounds: list[Interval | None],
                region: Region) -> Interval:
    """Node ``i``'s bounds tightened by CROWN where ``need_lo`` / ``need_hi`` (``[B, *shape]``) say, in chunks of rows.

    Each example lists its own needed bounds (row ``q < n`` bounds entry
    ``q`` from below, row ``n + q`` from above); chunk ``c`` takes the
    ``c``-th block of every example's list, for the examples whose list is
    that long (so an example needing few rows costs few). A chunk holds as
    many rows as :data:`CHUNK_ENTRIES` allows against the widest node below ``i``.
    """
    lo, hi = bounds[i]  # type: ignore[misc]
    b, n = lo.shape[0], nodes[i].numel
    need = torch.cat([need_lo.reshape(b, n), need_hi.reshape(b, n)], 1)
    count = need.sum(1)
    k = int(count.max()) if b else 0
    if k == 0:
        return lo, hi
    # the needed rows of each example first, in index order
    order = need.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :k]
    widest = max(nodes[j].numel for j in _cone(nodes, i))
    # both sides in one vector: lower bounds, then upper bounds negated (a lower bound of −z is −upper)
    flat = torch.cat([lo.reshape(b, n), -hi.reshape(b, n)], 1)
    s = 0
    while s < k:
        ex = (count > s).nonzero().squeeze(1)
        c = max(1, min(k - s, CHUNK_ENTRIES // (len(ex) * widest)))
        sel = order[ex, s:s + c]
        keep = torch.arange(s, s + c, device=lo.device) < count[ex, None]
        sign = torch.where(sel < n, 1.0, -1.0).to(lo.dtype)
        rows = torch.zeros(len(ex), c, n, dtype=lo.dtype, device=lo.device).scatter_(2, (sel % n)[:, :, None],
                                                                                     sign[:, :, None])
        sub = Region(region.x0[ex], region.r[ex], region.norm, region.lo, region.hi)
        low = _backward(nodes, i, rows.reshape(len(ex), c, *nodes[i].shape),
                        [None if t is None else (t[0][ex], t[1][ex]) for t in bounds], sub, relax=True)
        flat = flat.index_copy(0, ex, flat[ex].scatter_reduce(1, sel, torch.where(keep, low, -torch.inf), "amax"))
        s += c
    return flat[:, :n].reshape(lo.shape), (-flat[:, n:]).reshape(hi.shape)


@dataclass
class Reuse:
    """What one radius search over a fixed batch carries from one bound evaluation to the next.

    A bound over the ``R``-ball holds over every smaller ball, so layer
    bounds computed at radius ``R`` tighten (by intersection) those at any
    ``r ≤ R``; neurons they show stable cost no rows there. The check
    ``r ≤ R`` is made per example at every use, so a caller cannot make a
    bound unsound by keeping the wrong ones (only less useful). α-CROWN's
    slopes are sound for any value and warm-start the next evaluation.
    """

    radius: Tensor | None = None                 # [B]: the kept bounds hold for every radius up to this
    bounds: list[Interval] | None = None
    slopes: dict[int, Tensor] = field(default_factory=dict)
    _last: tuple[Tensor, list[Interval]] | None = None

    def prior(self, r: Tensor) -> list[Interval | None] | None:
        """The kept bounds where they hold at radius ``r`` (per example), ``±inf`` elsewhere."""
        if self.radius is None or self.bounds is None:
            return None
        ok = r <= self.radius
        out: list[Interval | None] = []
        for lo, hi in self.bounds:
            m = ok.reshape(-1, *[1] * (lo.dim() - 1))
            out.append((torch.where(m, lo, float("-inf")), torch.where(m, hi, float("inf"))))
        return out

    def record(self, r: Tensor, bounds: list[Interval]) -> None:
        """The last evaluation's radii and layer bounds, for :meth:`keep`."""
        self._last = (r.detach().clone(), [(lo.detach(), hi.detach()) for lo, hi in bounds])

    def keep(self, where: Tensor) -> None:
        """Keep the last evaluation's bounds where ``where``: radii that the later ones will not exceed."""
        if self._last is None:
            return
        r, bounds = self._last
        if self.radius is None or self.bounds is None:
            self.radius, self.bounds = r, bounds
            return
        self.radius = torch.where(where, r, self.radius)
        out = []
        for (lo, hi), (klo, khi) in zip(bounds, self.bounds):
            m = where.reshape(-1, *[1] * (lo.dim() - 1))
            out.append((torch.where(m, lo, klo), torch.where(m, hi, khi)))
        self.bounds = out


def _spec(nodes: list[Node], y: Tensor, like: Tensor) -> Tensor:
    """``[B, classes − 1, classes]``: row ``j`` reads ``f_y − f_j`` for every ``j ≠ y`` in ascending order."""
    classes = nodes[-1].shape[0]
    b = y.shape[0]
    others = torch.arange(classes, device=y.device).expand(b, -1)
    others = others[others != y[:, None]].reshape(b, classes - 1)
    spec = torch.zeros(b, classes - 1, classes, dtype=like.dtype, device=like.device)
    spec.scatter_(2, y[:, None, None].expand(-1, classes - 1, 1), 1.0)
    spec.scatter_(2, others[:, :, None], -1.0)
    return spec


def margin_lower_bounds(nodes: list[Node], region: Region, y: Tensor, method: str,
                        reuse: Reuse | None = None) -> Tensor:
    """Lower bounds of ``f_y − f_j`` for every ``j ≠ y`` over the region: ``[B, classes − 1]``.

    ``reuse`` (one radius search over a fixed batch): kept layer bounds and
    α-CROWN slopes from earlier evaluations, see :class:`Reuse`; this
    evaluation's layer bounds are recorded in it.
    """
    _check_method(method)
    prior = None if reuse is None else reuse.prior(region.r)
    low, bounds = _margins(nodes, region, y, method, prior)
    if reuse is not None:
        reuse.record(region.r, bounds)
    if method in ("crown", "alpha-crown"):
        # CROWN's bound is not monotone in the intermediate bounds (tighter ones change which relaxation
        # each neuron gets downstream, and it can lose a few percent), so CROWN-IBP's is a candidate too
        low = torch.maximum(low, _margins(nodes, region, y, "crown-ibp", prior)[0])
    if method == "alpha-crown":
        low = _tune_slopes(nodes, _spec(nodes, y, region.x0), bounds, region, low, reuse)
    return low


def _margins(nodes: list[Node], region: Region, y: Tensor, method: str,
             prior: Sequence[Interval | None] | None) -> tuple[Tensor, list[Interval]]:
    """The margins' lower bounds by ``method`` without α, and the layer bounds they used."""
    spec = _spec(nodes, y, region.x0)
    bounds = layer_bounds(nodes, region, method, prior)
    last = len(nodes) - 1
    # the specification folded into the linear ops after the last non-linearity (CROWN-IBP)
    low = _backward(nodes, last, spec, bounds, region, relax=False)
    if method != "ibp":
        low = torch.maximum(low, _backward(nodes, last, spec, bounds, region, relax=True))
    return low, bounds


def _tune_slopes(nodes: list[Node], spec: Tensor, bounds: list[Interval], region: Region, low: Tensor,
                 reuse: Reuse | None) -> Tensor:
    """α-CROWN: the margins' bound maximized over the tunable ops' parameters, per example and margin.

    Only examples not yet proven (some margin bound ≤ 0) are tuned; each
    margin's bound is the best of every step (all are sound) and of
    ``low``, CROWN's. The tuned parameters start from ``reuse``'s (the last
    evaluation's) where it has them and go back into it.
    """
    tunable = [i for i, n in enumerate(nodes) if n.op.tunable and n.inputs]
    rows = (low.amin(1) <= 0).nonzero().squeeze(1)
    if not tunable or rows.numel() == 0:
        return low
    b, s = spec.shape[:2]
    sub = Region(region.x0[rows], region.r[rows], region.norm, region.lo, region.hi)
    sub_bounds = [(lo[rows].detach(), hi[rows].detach()) for lo, hi in bounds]
    params: dict[int, Tensor] = {}
    for i in tunable:
        shape = (b, s, *nodes[i].shape)
        kept = reuse.slopes.get(i) if reuse is not None else None
        if kept is not None and kept.shape == shape:
            start = kept[rows]
        else:
            like = torch.zeros(len(rows), s, *nodes[i].shape, dtype=low.dtype, device=low.device)
            start = cast(TunableOp, nodes[i].op).initial_params(like, [sub_bounds[j] for j in nodes[i].inputs])
        params[i] = start.detach().clone().requires_grad_()
    best = low[rows]
    last = len(nodes) - 1
    with torch.enable_grad():
        opt = torch.optim.Adam(list(params.values()), lr=ALPHA_LR)
        for step in range(ALPHA_STEPS):
            value = _backward(nodes, last, spec[rows], sub_bounds, sub, relax=True, params=params)
            best = torch.maximum(best, value.detach())
            if step == ALPHA_STEPS - 1:
                break
            opt.zero_grad()
            (-value.sum()).backward()
            opt.step()
            with torch.no_grad():
                for i, p in params.items():
                    p.copy_(cast(TunableOp, nodes[i].op).project(p))
    if reuse is not None:
        for i, p in params.items():
            kept = reuse.slopes.get(i)
            if kept is None or kept.shape[0] != b:
                like = torch.zeros(b, s, *nodes[i].shape, dtype=low.dtype, device=low.device)
                kept = cast(TunableOp, nodes[i].op).initial_params(like, [bounds[j] for j in nodes[i].inputs]).detach()
            reuse.slopes[i] = kept.index_copy(0, rows, p.detach())
    return low.index_copy(0, rows, best)
