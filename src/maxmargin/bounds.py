"""Sound bounds on a network's outputs over a norm ball intersected with the input box.

The model is traced with ``torch.fx`` into a graph of a few operation kinds:

* **affine** maps (Linear, Conv, BatchNorm in eval mode, average pooling,
  flatten/reshape, dropout in eval mode, arithmetic with constants such as an
  input normalization): bounded exactly, interval or linear;
* **ReLU** and non-overlapping-or-not **max pooling**: relaxed;
* **residual sums** of two branches;
* the WRN's **per-image standardization**: interval bounds only (linear
  bound propagation stops there and uses its interval).

Two methods give lower bounds of the margins ``f_y − f_j`` (``j ≠ y``):

* ``"ibp"``: interval bounds layer by layer (Gowal et al. 2018), with the
  margin specification folded into the affine layers after the last
  non-linearity, as CROWN-IBP does: much tighter than subtracting intervals;
* ``"crown"``: linear relaxations of every ReLU and max-pool propagated
  backwards to the input (Zhang et al. 2018), concretized exactly over the
  ball and the box. Intermediate (pre-activation) bounds come from CROWN
  itself where that is affordable and from intervals elsewhere (CROWN-IBP
  style); every bound is intersected with the interval one, so CROWN is never
  looser than IBP.

Everything is vectorized over the batch and the specification rows; radii
are per example. Bounds are computed in the model's floating-point type:
pass a float64 model to rule out float32 rounding.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .models.wideresnet import PerImageStandardize
from .norms import Norm, bcast

Interval = tuple[Tensor, Tensor]

# CROWN bounds for an intermediate layer cost (2 × its width) backward passes
# through everything beneath it. Above this many multiply-adds per example and
# bound evaluation (LeNet5's or SmallCNN's FC layer over their convolutions:
# 1e8-1e10; MLP-800's second layer: 2e9) the interval bound is used instead,
# which keeps 500 MNIST digits within minutes on two CPU cores; small MLPs
# (784-100-100-10: 2e7) get CROWN all the way.
CROWN_INTERMEDIATE_BUDGET = 3e7


# ---------------------------------------------------------------- operations

class Op(ABC):
    """One node's operation; ``inputs`` are indices of earlier nodes."""

    @abstractmethod
    def interval(self, ins: list[Interval]) -> Interval:
        """Bounds of this node's output given interval bounds of its inputs."""


@dataclass
class Input(Op):
    def interval(self, ins: list[Interval]) -> Interval:
        """The input's bounds are the region's box, passed in as the one input."""
        return ins[0]


@dataclass
class Affine(Op):
    """``z ↦ W z + b`` given as functions: ``fn`` (with bias), ``abs_fn`` (``|W| z``), ``sq_fn`` (``W² z``)."""

    fn: Callable[[Tensor], Tensor]
    abs_fn: Callable[[Tensor], Tensor]
    sq_fn: Callable[[Tensor], Tensor] | None = None
    matrix: Tensor | None = None          # Linear layers: back-substitution is one matmul
    reshape: bool = False                 # a pure reshape: back-substitution is a reshape too
    _bias: Tensor | None = field(default=None, repr=False)

    def bias(self, in_shape: tuple[int, ...], like: Tensor) -> Tensor:
        if self._bias is None or self._bias.dtype != like.dtype:
            self._bias = self.fn(torch.zeros(1, *in_shape, dtype=like.dtype, device=like.device)).detach()
        return self._bias

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        mid, rad = self.fn((lo + hi) / 2), self.abs_fn((hi - lo) / 2)
        return mid - rad, mid + rad

    def back(self, a: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``Aᵀ``-products: the coefficients on the input and the constant, for ``a`` of shape ``[N, *out]``."""
        if self.reshape:
            return a.reshape(a.shape[0], *in_shape), a.new_zeros(a.shape[0])
        const = (a * self.bias(in_shape, a)).flatten(1).sum(1)
        if self.matrix is not None:
            return a @ self.matrix, const
        # A vector-Jacobian product of an affine map is its transpose applied to ``a``.
        z = torch.zeros(a.shape[0], *in_shape, dtype=a.dtype, device=a.device, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.fn(z), z, a)
        return g, const


@dataclass
class Relu(Op):
    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return lo.clamp_min(0), hi.clamp_min(0)

    @staticmethod
    def back(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Lower bound of ``a · relu(z)`` by a linear function of ``z``; ``lo``, ``hi`` broadcast against ``a``."""
        active, unstable = lo >= 0, (lo < 0) & (hi > 0)
        slope_up = torch.where(unstable, hi / (hi - lo).clamp_min(1e-30), active.to(a.dtype))
        # the lower line through the origin with the smaller area: identity where hi > -lo, else 0
        slope_lo = torch.where(unstable, (hi > -lo).to(a.dtype), active.to(a.dtype))
        pos, neg = a.clamp_min(0), a.clamp_max(0)
        coef = pos * slope_lo + neg * slope_up
        const = (neg * torch.where(unstable, -slope_up * lo, torch.zeros_like(lo))).flatten(2).sum(2)
        return coef, const


@dataclass
class MaxPool(Op):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def _pool(self, v: Tensor) -> Tensor:
        return F.max_pool2d(v, self.kernel, self.stride, self.padding, self.dilation)

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = ins[0]
        return self._pool(lo), self._pool(hi)

    def _windows(self, v: Tensor) -> Tensor:
        """``[B, C, k, L]``: every window's entries, padding as −inf (never the max)."""
        ph, pw = self.padding
        v = F.pad(v, (pw, pw, ph, ph), value=float("-inf"))
        cols = F.unfold(v, self.kernel, dilation=self.dilation, stride=self.stride)
        return cols.reshape(v.shape[0], v.shape[1], -1, cols.shape[-1])

    def back(self, a: Tensor, lo: Tensor, hi: Tensor, in_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``a``: ``[B, S, C, Ho, Wo]``; ``lo``/``hi``: ``[B, C, H, W]``.

        Lower relaxation: ``max ≥ z_m`` with ``m`` the entry of the largest lower
        bound. Upper: ``max = z_m`` when ``lo_m`` beats every other entry's upper
        bound, else the constant ``max hi``.
        """
        b, s = a.shape[:2]
        wl, wh = self._windows(lo), self._windows(hi)                 # [B, C, k, L]
        m = wl.argmax(dim=2, keepdim=True)
        onehot = torch.zeros_like(wl).scatter_(2, m, 1.0)
        others = wh.masked_fill(onehot.bool(), float("-inf")).amax(dim=2)
        decided = wl.gather(2, m).squeeze(2) >= others                # [B, C, L]
        top = wh.amax(dim=2)
        a = a.flatten(3)                                              # [B, S, C, L]
        pos, neg = a.clamp_min(0), a.clamp_max(0)
        on_m = pos + torch.where(decided[:, None], neg, torch.zeros_like(neg))
        const = (torch.where(decided[:, None], torch.zeros_like(neg), neg) * top[:, None]).flatten(2).sum(2)
        cols = (on_m.unsqueeze(3) * onehot[:, None]).reshape(b * s, -1, on_m.shape[-1])
        ph, pw = self.padding
        h, w = in_shape[-2] + 2 * ph, in_shape[-1] + 2 * pw
        coef = F.fold(cols, (h, w), self.kernel, dilation=self.dilation, stride=self.stride)
        coef = coef[..., ph:ph + in_shape[-2], pw:pw + in_shape[-1]]
        return coef.reshape(b, s, *in_shape), const


@dataclass
class Add(Op):
    def interval(self, ins: list[Interval]) -> Interval:
        return ins[0][0] + ins[1][0], ins[0][1] + ins[1][1]


@dataclass
class Standardize(Op):
    """Per-image ``(x − mean) / max(std, 1/√n)``: interval bounds only."""

    def interval(self, ins: list[Interval]) -> Interval:
        lo, hi = (t.flatten(1) for t in ins[0])
        n = lo.shape[1]
        # x_i − mean = (1 − 1/n) x_i − (Σ_{j≠i} x_j) / n, each term at its own extreme
        vlo = (1 - 1 / n) * lo - (hi.sum(1, keepdim=True) - hi) / n
        vhi = (1 - 1 / n) * hi - (lo.sum(1, keepdim=True) - lo) / n
        small = torch.where((vlo <= 0) & (vhi >= 0), torch.zeros_like(vlo), torch.minimum(vlo.abs(), vhi.abs()))
        big = torch.maximum(vlo.abs(), vhi.abs())
        floor = 1.0 / n ** 0.5
        s_lo = (small.square().sum(1, keepdim=True) / n).sqrt().clamp_min(floor)
        s_hi = (big.square().sum(1, keepdim=True) / n).sqrt().clamp_min(floor)
        out_lo = torch.minimum(vlo / s_lo, vlo / s_hi)
        out_hi = torch.maximum(vhi / s_lo, vhi / s_hi)
        shape = ins[0][0].shape
        return out_lo.reshape(shape), out_hi.reshape(shape)


# ------------------------------------------------------------------- tracing

@dataclass
class Node:
    op: Op
    inputs: list[int]
    shape: tuple[int, ...]          # per example, without the batch dimension
    fan_in: int = 1                 # multiply-adds per output element of a backward pass

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PerImageStandardize) or super().is_leaf_module(m, qualname)


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _reshape(shape: tuple[int, ...]) -> Affine:
    def fn(z: Tensor) -> Tensor:
        return z.reshape(z.shape[0], *shape)
    return Affine(fn, fn, fn, reshape=True)


def _scale(c: Tensor | float, divide: bool = False) -> Affine:
    c = torch.as_tensor(c)
    if divide:
        c = 1 / c
    return Affine(lambda z: z * c.to(z), lambda z: z * c.abs().to(z), lambda z: z * (c * c).to(z))


def _shift(c: Tensor | float, sign: float = 1.0) -> Affine:
    c = torch.as_tensor(c)
    return Affine(lambda z: z + sign * c.to(z), lambda z: z, lambda z: z)


def _module_op(m: nn.Module, name: str, out_shape: tuple[int, ...]) -> Op:
    if isinstance(m, nn.Linear):
        w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
        return Affine(lambda z: F.linear(z, w, b), lambda z: F.linear(z, w.abs()),
                      lambda z: F.linear(z, w * w), matrix=w)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            raise ValueError(f"certified_margin cannot bound layer {name} ({type(m).__name__} with "
                             f"padding_mode={m.padding_mode!r}); only zero padding is supported")
        w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
        return Affine(lambda z: m._conv_forward(z, w, b), lambda z: m._conv_forward(z, w.abs(), None),
                      lambda z: m._conv_forward(z, w * w, None))
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.running_mean is None or m.running_var is None:
            raise ValueError(f"certified_margin cannot bound layer {name} ({type(m).__name__} without "
                             "running statistics): it has no fixed affine form in eval mode")
        scale = (m.running_var + m.eps).rsqrt()
        if m.weight is not None:
            scale = scale * m.weight
        shift = -m.running_mean * scale + (m.bias if m.bias is not None else 0)
        view = (1, -1) + (1,) * (len(out_shape) - 1)
        s, t = scale.detach().reshape(view), shift.detach().reshape(view)
        return Affine(lambda z: z * s + t, lambda z: z * s.abs(), lambda z: z * s * s)
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return Affine(m, m)     # non-negative weights, no bias
    if isinstance(m, (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)):
        return _reshape(out_shape)
    if isinstance(m, nn.ReLU):
        return Relu()
    if isinstance(m, nn.MaxPool2d):
        if m.ceil_mode or m.return_indices:
            raise ValueError(f"certified_margin cannot bound layer {name} (MaxPool2d with ceil_mode or "
                             "return_indices)")
        return MaxPool(_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), _pair(m.dilation))
    if isinstance(m, PerImageStandardize):
        return Standardize()
    raise ValueError(f"certified_margin cannot bound layer {name} ({type(m).__name__}); supported: Linear, "
                     "Conv1d/2d, ReLU, MaxPool2d, AvgPool, BatchNorm (eval), Flatten, Dropout (eval), "
                     "PerImageStandardize, residual sums and constant affine arithmetic")


_RESHAPES = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze"}


def trace(model: nn.Module, example: Tensor) -> list[Node]:
    """The model as a list of :class:`Node` in topological order; node 0 is the input, the last the logits."""
    from torch.fx.passes.shape_prop import ShapeProp

    tracer = _Tracer()
    if tracer.is_leaf_module(model, ""):     # a bare layer: fx traces into the root, so give it one
        model = nn.Sequential(model)
    try:
        gm = fx.GraphModule(model, tracer.trace(model))
        ShapeProp(gm).propagate(example[:1])
    except ValueError:
        raise
    except Exception as err:   # fx raises many kinds for untraceable models and shape mismatches
        raise ValueError(f"certified_margin cannot trace {type(model).__name__} on inputs of shape "
                         f"{tuple(example.shape[1:])}: {type(err).__name__}: {err}") from None

    index: dict[fx.Node, int] = {}
    nodes: list[Node] = []
    consts: dict[fx.Node, Any] = {}
    result: fx.Node | None = None

    def const(arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return consts.get(arg)
        return arg if isinstance(arg, (int, float, Tensor)) else None

    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        if n.op == "output":
            result = n.args[0]
            break
        if n.op == "get_attr":
            consts[n] = _attr(gm, n.target)
            continue
        if n.op in ("call_function", "call_method") and not any(
                isinstance(a, fx.Node) and a in index for a in (*n.args, *n.kwargs.values())):
            consts[n] = _evaluate_constant(n, const)     # e.g. a normalization buffer's .view(1, 3, 1, 1)
            continue
        if meta is None or not hasattr(meta, "shape"):    # sizes and other non-tensor values
            consts[n] = n.meta.get("val")
            continue
        shape = tuple(meta.shape[1:])
        if any(isinstance(v, fx.Node) and v in index for v in n.kwargs.values()):
            raise ValueError(f"certified_margin cannot bound {n.format_node()}: a tensor passed by keyword")
        tensor_args = [a for a in n.args if isinstance(a, fx.Node) and a in index]
        op: Op
        if n.op == "placeholder":
            op = Input()
        elif n.op == "call_module":
            op = _module_op(gm.get_submodule(n.target), str(n.target), shape)
        else:
            op = _function_op(n, tensor_args, const, shape)
        inputs = [index[a] for a in tensor_args]
        if isinstance(op, Add) and len(inputs) != 2:
            raise ValueError(f"certified_margin cannot bound {n.format_node()}")
        index[n] = len(nodes)
        fan_in = 1
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = gm.get_submodule(n.target).weight[0].numel()
        nodes.append(Node(op, inputs, shape, fan_in))
    if not isinstance(result, fx.Node) or result not in index or index[result] != len(nodes) - 1:
        raise ValueError(f"certified_margin needs a model whose forward returns one logits tensor "
                         f"({type(model).__name__} does not)")
    return nodes


def _evaluate_constant(n: fx.Node, const: Callable[[Any], Any]) -> Any:
    args = [const(a) if isinstance(a, fx.Node) else a for a in n.args]
    kwargs = {k: const(v) if isinstance(v, fx.Node) else v for k, v in n.kwargs.items()}
    if n.op == "call_method":
        return getattr(args[0], n.target)(*args[1:], **kwargs)
    return n.target(*args, **kwargs)


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, Tensor) else obj


def _function_op(n: fx.Node, tensor_args: list[fx.Node], const: Callable[[Any], Any],
                 shape: tuple[int, ...]) -> Op:
    fn, args = n.target, n.args
    name = fn if isinstance(fn, str) else getattr(fn, "__name__", str(fn))
    if name in ("relu", "relu_"):
        return Relu()
    if name in _RESHAPES or fn is torch.flatten:
        return _reshape(shape)
    if fn in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.avg_pool2d, F.avg_pool1d) or name == "mean":
        other = tuple(args[1:])
        kwargs = dict(n.kwargs)
        if name == "mean":
            return Affine(lambda z: z.mean(*other, **kwargs), lambda z: z.mean(*other, **kwargs))
        return Affine(lambda z: fn(z, *other, **kwargs), lambda z: fn(z, *other, **kwargs))
    if fn is F.max_pool2d:
        kw = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"), args[1:]))
        kw.update(n.kwargs)
        if kw.get("ceil_mode") or kw.get("return_indices"):
            raise ValueError(f"certified_margin cannot bound {n.format_node()} (ceil_mode/return_indices)")
        k = kw["kernel_size"]
        return MaxPool(_pair(k), _pair(kw.get("stride") or k), _pair(kw.get("padding", 0)),
                       _pair(kw.get("dilation", 1)))
    if name in ("add", "iadd", "sub", "mul", "truediv", "div"):
        a, b = args[0], args[1]
        ca, cb = const(a), const(b)
        if name in ("add", "iadd") and ca is None and cb is None and len(tensor_args) == 2:
            return Add()
        if len(tensor_args) == 1:
            if name in ("add", "iadd"):
                return _shift(cb if ca is None else ca)
            if name == "sub" and ca is None:
                return _shift(cb, -1.0)
            if name == "mul":
                return _scale(cb if ca is None else ca)
            if name in ("truediv", "div") and ca is None:
                return _scale(cb, divide=True)
    raise ValueError(f"certified_margin cannot bound the operation {name!r} in {n.format_node()}; supported: "
                     "Linear, Conv, ReLU, MaxPool2d, AvgPool, BatchNorm (eval), flatten/reshape, residual "
                     "sums and arithmetic with constants")


# ------------------------------------------------------------- propagation

@dataclass
class Region:
    """The ball of per-example radius ``r`` around ``x0`` intersected with the box ``[lo, hi]``."""

    x0: Tensor
    r: Tensor
    norm: Norm
    lo: float
    hi: float

    def box(self) -> Interval:
        r = bcast(self.r, self.x0)
        return (self.x0 - r).clamp(self.lo, self.hi), (self.x0 + r).clamp(self.lo, self.hi)

    def affine(self, op: Affine) -> Interval:
        """Bounds of ``W x + b`` over the region: the tighter of the ball's and the box's."""
        lo, hi = op.interval([self.box()])
        if op.sq_fn is not None:
            ones = torch.ones_like(self.x0[:1])
            reach = self.norm.row_duals(op.abs_fn, op.sq_fn, ones)
            mid = op.fn(self.x0)
            rad = reach * bcast(self.r, mid)
            lo, hi = torch.maximum(lo, mid - rad), torch.minimum(hi, mid + rad)
        return lo, hi

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


def _backward(nodes: list[Node], start: int, a: Tensor, bounds: list[Interval | None], region: Region,
              relax: bool) -> Tensor:
    """Lower bound of ``a · node[start]`` (``a``: ``[B, S, *shape]``) as ``[B, S]``.

    Walks the graph backwards through affine maps and sums; with ``relax``
    through ReLU and max-pool relaxations too. Wherever it stops, the
    coefficients are concretized against that node's interval bounds.
    """
    b, s = a.shape[:2]
    pending: dict[int, Tensor] = {start: a}
    total = torch.zeros(b, s, dtype=a.dtype, device=a.device)
    for i in range(start, -1, -1):
        if i not in pending:
            continue
        a = pending.pop(i)
        node = nodes[i]
        op = node.op

        def push(j: int, coef: Tensor) -> None:
            pending[j] = pending[j] + coef if j in pending else coef

        if isinstance(op, Input):
            total = total + region.lower(a)
        elif isinstance(op, Affine):
            coef, const = op.back(a.reshape(b * s, *node.shape), nodes[node.inputs[0]].shape)
            push(node.inputs[0], coef.reshape(b, s, *nodes[node.inputs[0]].shape))
            total = total + const.reshape(b, s)
        elif isinstance(op, Add):
            push(node.inputs[0], a)
            push(node.inputs[1], a)
        elif relax and isinstance(op, Relu):
            lo, hi = bounds[node.inputs[0]]
            coef, const = Relu.back(a, lo[:, None], hi[:, None])
            push(node.inputs[0], coef)
            total = total + const.reshape(b, s)
        elif relax and isinstance(op, MaxPool):
            lo, hi = bounds[node.inputs[0]]
            coef, const = op.back(a, lo, hi, nodes[node.inputs[0]].shape)
            push(node.inputs[0], coef)
            total = total + const
        else:
            total = total + interval_lower(a, bounds[i])
    return total


def _cone_cost(nodes: list[Node], k: int) -> float:
    """Multiply-adds per example of a CROWN bound of node ``k``: 2·width rows through everything below it."""
    seen, stack = set(), [k]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(nodes[i].inputs)
    return 2.0 * nodes[k].numel * sum(nodes[i].numel * nodes[i].fan_in for i in seen)


def _needs_bounds(nodes: list[Node]) -> set[int]:
    return {n.inputs[0] for n in nodes if isinstance(n.op, (Relu, MaxPool))}


def layer_bounds(nodes: list[Node], region: Region, method: str) -> list[Interval]:
    """Interval bounds of every node; with ``method="crown"`` tightened by CROWN where affordable."""
    bounds: list[Interval | None] = [None] * len(nodes)
    want = _needs_bounds(nodes) if method == "crown" else set()
    for i, node in enumerate(nodes):
        op = node.op
        if isinstance(op, Input):
            bounds[i] = op.interval([region.box()])
        elif isinstance(op, Affine) and isinstance(nodes[node.inputs[0]].op, Input):
            bounds[i] = region.affine(op)
        else:
            bounds[i] = op.interval([bounds[j] for j in node.inputs])
        if i in want and not _affine_of_input(nodes, i) and _cone_cost(nodes, i) <= CROWN_INTERMEDIATE_BUDGET:
            lo, hi = bounds[i]
            b, n = lo.shape[0], node.numel
            eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
            a = torch.cat([eye, -eye]).reshape(1, 2 * n, *node.shape).expand(b, -1, *node.shape)
            low = _backward(nodes, i, a, bounds, region, relax=True)
            lo = torch.maximum(lo, low[:, :n].reshape(lo.shape))
            hi = torch.minimum(hi, -low[:, n:].reshape(hi.shape))
            bounds[i] = (lo, hi)
    return bounds  # type: ignore[return-value]


def _affine_of_input(nodes: list[Node], i: int) -> bool:
    """The node is one affine map of the input, whose region bounds are already exact per neuron."""
    node = nodes[i]
    return isinstance(node.op, Affine) and isinstance(nodes[node.inputs[0]].op, Input)


def margin_lower_bounds(nodes: list[Node], region: Region, y: Tensor, method: str) -> Tensor:
    """Lower bounds of ``f_y − f_j`` for every ``j ≠ y`` over the region: ``[B, classes − 1]``."""
    out = nodes[-1]
    classes = out.shape[0]
    b = y.shape[0]
    x0 = region.x0
    others = torch.arange(classes, device=y.device).expand(b, -1)
    others = others[others != y[:, None]].reshape(b, classes - 1)
    spec = torch.zeros(b, classes - 1, classes, dtype=x0.dtype, device=x0.device)
    spec.scatter_(2, y[:, None, None].expand(-1, classes - 1, 1), 1.0)
    spec.scatter_(2, others[:, :, None], -1.0)
    bounds = layer_bounds(nodes, region, method)
    # the specification folded into the affine layers after the last non-linearity (CROWN-IBP)
    low = _backward(nodes, len(nodes) - 1, spec, bounds, region, relax=False)
    if method == "crown":
        low = torch.maximum(low, _backward(nodes, len(nodes) - 1, spec, bounds, region, relax=True))
    return low
