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
  (:data:`CHUNK_ENTRIES`), a convolutional layer's rows as spatial windows
  (:mod:`.windows`, :data:`TILE`);
* ``"alpha-crown"``: full CROWN with the lower ReLU slopes optimized by
  projected Adam (:data:`ALPHA_STEPS` steps): layer by layer, every
  intermediate row its own slopes for its own bound, then the margins'
  pass, one set per example and margin.

Every bound is intersected with the interval one, so each method is never
looser than IBP. CROWN's margin bound is not monotone in the intermediate
bounds (tighter ones change the relaxation each neuron gets, and with it the
signs further down), so ``"crown"`` takes the better of its own and
CROWN-IBP's bound, and α-CROWN keeps the best of all its steps and CROWN's:
per example and margin, α-CROWN ≥ CROWN ≥ CROWN-IBP ≥ IBP by construction.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import torch
from torch import Tensor

from ..norms import Norm, bcast
from . import windows
from .graph import Node
from .registry import Interval, TunableOp
from .windows import At

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

# Full CROWN sends a C × H × W node's rows one TILE × TILE block of positions at a time, as windows of
# every map below (:mod:`.windows`); 0 sends them dense over the whole maps (the same bounds, slower).
TILE = 2

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

    def lower(self, a: Tensor, at: At | None = None) -> Tensor:
        """``min a·x`` over the region for ``a`` of shape ``[B, S, *x]``: max of the ball's and the box's bound.

        ``at``: ``a`` is a window of ``x`` at this offset (zero outside, which adds nothing to either norm).
        """
        b, s = a.shape[:2]
        x0, box = self.x0, self.box()
        if at is not None:
            size = (a.shape[-2], a.shape[-1])
            x0, box = windows.crop(x0, at, size), windows.crop_interval(box, at, size)
        flat = a.reshape(b, s, -1)
        center = (flat * x0.reshape(b, 1, -1)).sum(2)
        ball = center - self.r[:, None] * self.norm.dual(flat.reshape(b * s, -1)).reshape(b, s)
        return torch.maximum(ball, interval_lower(a, box))


def interval_lower(a: Tensor, box: Interval) -> Tensor:
    """``min a·z`` over ``lo ≤ z ≤ hi``; ``a``: ``[B, S, *z]``, ``box``: ``[B, *z]`` each."""
    b, s = a.shape[:2]
    flat = a.reshape(b, s, -1)
    lo, hi = (t.reshape(b, 1, -1) for t in box)
    return (flat * (lo + hi) / 2).sum(2) - (flat.abs() * (hi - lo) / 2).sum(2)


def _backward(nodes: list[Node], start: int, a: Tensor, bounds: Sequence[Interval | None], region: Region,
              relax: bool, params: dict[int, Tensor] | None = None, at: At | None = None) -> Tensor:
    """Lower bound of ``a · node[start]`` (``a``: ``[B, S, *shape]``) as ``[B, S]``.

    Walks the graph backwards through linear ops (affine maps, sums); with
    ``relax`` through every op's relaxation too. Wherever it stops (an op
    without linear bounds, or a relaxed op when ``relax`` is off), the
    coefficients are concretized against that node's interval bounds.
    ``params``: free relaxation parameters of tunable nodes (α-CROWN), by
    node; a tunable node missing from it gets its op's initial parameters
    (CROWN's relaxation), added to ``params`` as a leaf to optimize.
    ``at``: ``a`` is a window of the node's map at this offset (:mod:`.windows`),
    and stays one through every op that has a window form.
    """
    b, s = a.shape[:2]
    pending: dict[int, tuple[Tensor, At | None]] = {start: (a, at)}
    total = torch.zeros(b, s, dtype=a.dtype, device=a.device)
    for i in range(start, -1, -1):
        if i not in pending:
            continue
        a, at = pending.pop(i)
        if at is not None and a.numel() == 0:         # a window wholly in some convolution's padding
            continue
        node = nodes[i]
        size = (a.shape[-2], a.shape[-1])
        if not node.inputs:                          # the model input: the region itself
            total = total + region.lower(a, at)
            continue
        step, ats = None, None
        tuned = relax and params is not None and node.op.tunable
        if relax or node.op.linear:
            ins = [bounds[j] for j in node.inputs]
            shapes = [nodes[j].shape for j in node.inputs]
            if at is not None and tuned and node.op.pointwise:
                ins = [windows.crop_interval(t, at, size) for t in ins]  # type: ignore[arg-type]
                shapes = [tuple(a.shape[2:])]
                ats = [at]
            elif at is not None:
                window = None if tuned else node.op.backward_window(a, ins, shapes, at)  # type: ignore[arg-type]
                if window is None:
                    a, at = windows.dense(a, at, node.shape), None
                else:
                    step, ats = (window[0], window[2]), window[1]
            if tuned:
                op = cast(TunableOp, node.op)
                if i not in params:  # type: ignore[operator]
                    params[i] = op.initial_params(a, ins).detach().requires_grad_()  # type: ignore[arg-type,index]
                step = op.backward_tuned(a, ins, shapes, params[i])  # type: ignore[arg-type,index]
            elif at is None:
                step = node.op.backward(a, ins, shapes)  # type: ignore[arg-type]
        if step is None:
            box = bounds[i] if at is None else windows.crop_interval(bounds[i], at, size)  # type: ignore[arg-type]
            total = total + interval_lower(a, box)  # type: ignore[arg-type]
            continue
        coefs, const = step
        for k, (j, coef) in enumerate(zip(node.inputs, coefs)):
            where = None if ats is None else ats[k]
            pending[j] = (windows.merge(*pending[j], coef, where, nodes[j].shape) if j in pending
                          else (coef, where))
        if const is not None:
            total = total + const
    return total


def _tuned_rows(nodes: list[Node], start: int, a: Tensor, bounds: Sequence[Interval | None], region: Region,
                at: At | None, params: dict[int, Tensor]) -> Tensor:
    """:func:`_backward` with the slopes ``params``, as :func:`_maximize` calls it."""
    return _backward(nodes, start, a, bounds, region, relax=True, params=params, at=at)


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
    ``"alpha-crown"`` tunes every intermediate row's slopes too, layer by
    layer: each row maximizes its own bound with the layers beneath fixed.
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
                bounds[i] = _crown_rows(nodes, i, *_needs(nodes, i, box, consumers), bounds, region,
                                        tune=method == "alpha-crown")
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
                region: Region, tune: bool = False) -> Interval:
    """Node ``i``'s bounds tightened by CROWN where ``need_lo`` / ``need_hi`` (``[B, *shape]``) say.

    A ``C × H × W`` node is done one tile of :data:`TILE` × :data:`TILE`
    positions at a time, its rows sent as windows (:mod:`.windows`); any
    other node in one piece, its rows dense. ``tune``: α-CROWN, every row
    with its own slopes (:func:`_maximize`).
    """
    lo, hi = bounds[i]  # type: ignore[misc]
    shape = nodes[i].shape
    if not windows.spatial(shape) or TILE <= 0:
        return _rows(nodes, i, need_lo, need_hi, lo, hi, bounds, region, None, tune)
    lo, hi = lo.clone(), hi.clone()
    for at, size in windows.tiles(shape[-2], shape[-1], TILE):
        nl, nh, cl, ch = (windows.crop(t, at, size) for t in (need_lo, need_hi, lo, hi))
        new_lo, new_hi = _rows(nodes, i, nl, nh, cl, ch, bounds, region, at, tune)
        windows.crop(lo, at, size).copy_(new_lo)
        windows.crop(hi, at, size).copy_(new_hi)
    return lo, hi


def _rows(nodes: list[Node], i: int, need_lo: Tensor, need_hi: Tensor, lo: Tensor, hi: Tensor,
          bounds: list[Interval | None], region: Region, at: At | None, tune: bool) -> Interval:
    """``lo``, ``hi`` (node ``i``'s, or their window at ``at``) tightened where ``need_*`` say, in chunks of rows.

    Each example lists its own needed bounds (row ``q < n`` bounds entry
    ``q`` from below, row ``n + q`` from above); chunk ``c`` takes the
    ``c``-th block of every example's list, for the examples whose list is
    that long (so an example needing few rows costs few). A chunk holds as
    many rows as :data:`CHUNK_ENTRIES` allows against the widest node below ``i``.
    """
    b, n = lo.shape[0], lo[0].numel()
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
        start = rows.reshape(len(ex), c, *lo.shape[1:])
        below = [None if t is None else (t[0][ex].detach(), t[1][ex].detach()) for t in bounds]
        if tune:
            low = _maximize(partial(_tuned_rows, nodes, i, start, below, sub, at), {}, nodes, None)
        else:
            low = _backward(nodes, i, start, below, sub, relax=True, at=at)
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
    low, bounds = _margins(nodes, region, y, "crown" if method == "alpha-crown" else method, prior)
    if method in ("crown", "alpha-crown"):
        # CROWN's bound is not monotone in the intermediate bounds (tighter ones change which relaxation
        # each neuron gets downstream, and it can lose a few percent), so CROWN-IBP's is a candidate too
        low = torch.maximum(low, _margins(nodes, region, y, "crown-ibp", prior)[0])
    if method == "alpha-crown":
        low, bounds = _alpha_crown(nodes, region, y, low, bounds, reuse)
    if reuse is not None:
        reuse.record(region.r, bounds)
    return low


def _alpha_crown(nodes: list[Node], region: Region, y: Tensor, low: Tensor, bounds: list[Interval],
                 reuse: Reuse | None) -> tuple[Tensor, list[Interval]]:
    """α-CROWN on the examples CROWN left unproven (some margin bound ≤ 0), starting from CROWN's ``low``, ``bounds``.

    Their intermediate slopes are tuned layer by layer over CROWN's bounds
    (so no layer bound is looser than CROWN's), then the margins' slopes;
    each margin keeps the best of CROWN's bound and every step's. Returns
    the margins' bounds and the layer bounds, CROWN's where nothing was tuned.
    """
    rows = (low.amin(1) <= 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return low, bounds
    sub = Region(region.x0[rows], region.r[rows], region.norm, region.lo, region.hi)
    tuned_low, tuned = _margins(nodes, sub, y[rows], "alpha-crown", [(lo[rows], hi[rows]) for lo, hi in bounds])
    best = _tune_slopes(nodes, _spec(nodes, y[rows], sub.x0), tuned, sub, torch.maximum(low[rows], tuned_low),
                        reuse, rows, low.shape[0])
    merged = [(lo.index_copy(0, rows, tlo), hi.index_copy(0, rows, thi)) for (lo, hi), (tlo, thi) in zip(bounds, tuned)]
    return low.index_copy(0, rows, best), merged


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


def _maximize(bound: Callable[[dict[int, Tensor]], Tensor], params: dict[int, Tensor], nodes: list[Node],
              best: Tensor | None) -> Tensor:
    """α-CROWN's projected Adam on the slopes ``params`` of ``bound(params)``: per row, the best of every step.

    Every step's bound is sound (the ops keep any slope sound), so the best
    of them is. Tunable nodes missing from ``params`` start from CROWN's
    slopes (the first evaluation adds them); ``best``: a bound to beat.
    """
    with torch.enable_grad():
        value = bound(params)
        best = value.detach() if best is None else torch.maximum(best, value.detach())
        if not params:
            return best
        opt = torch.optim.Adam(list(params.values()), lr=ALPHA_LR)
        for _ in range(ALPHA_STEPS - 1):
            opt.zero_grad()
            (-value.sum()).backward()
            opt.step()
            with torch.no_grad():
                for i, p in params.items():
                    p.copy_(cast(TunableOp, nodes[i].op).project(p))
            value = bound(params)
            best = torch.maximum(best, value.detach())
    return best


def _tune_slopes(nodes: list[Node], spec: Tensor, bounds: list[Interval], region: Region, low: Tensor,
                 reuse: Reuse | None, rows: Tensor, b: int) -> Tensor:
    """α-CROWN's last pass: the margins' bound maximized over the tunable ops' slopes, per example and margin.

    Every argument but ``reuse`` is of the examples ``rows`` of the batch of
    ``b``; each margin's bound is the best of every step (all are sound) and
    of ``low``. The slopes start from ``reuse``'s (the last evaluation's)
    where it has them (NaN where it has none) and go back into it.
    """
    tunable = [i for i, n in enumerate(nodes) if n.op.tunable and n.inputs]
    if not tunable:
        return low
    bounds = [(lo.detach(), hi.detach()) for lo, hi in bounds]
    s = spec.shape[1]
    params: dict[int, Tensor] = {}
    for i in tunable:
        like = torch.zeros(len(rows), s, *nodes[i].shape, dtype=low.dtype, device=low.device)
        start = cast(TunableOp, nodes[i].op).initial_params(like, [bounds[j] for j in nodes[i].inputs])
        kept = reuse.slopes.get(i) if reuse is not None else None
        if kept is not None and kept.shape == (b, *like.shape[1:]):
            start = torch.where(kept[rows].isnan(), start, kept[rows])
        params[i] = start.detach().clone().requires_grad_()
    last = len(nodes) - 1
    best = _maximize(lambda p: _backward(nodes, last, spec, bounds, region, relax=True, params=p), params,
                     nodes, low)
    if reuse is not None:
        for i, p in params.items():
            kept = reuse.slopes.get(i)
            if kept is None or kept.shape != (b, *p.shape[1:]):
                kept = torch.full((b, *p.shape[1:]), float("nan"), dtype=p.dtype, device=p.device)
            reuse.slopes[i] = kept.index_copy(0, rows, p.detach())
    return best
