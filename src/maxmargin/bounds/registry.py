"""The one table from layers and functions to bound ops, and the interface every op implements.

An op class says which modules and functions it covers with :func:`bound_op`;
the tracer (:mod:`.graph`) looks every traced call up here and the
propagation (:mod:`.propagate`) only ever talks to :class:`BoundOp`'s methods.
"""
from __future__ import annotations

import inspect
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from .windows import At, crop_interval

if TYPE_CHECKING:      # propagate imports this module
    from .propagate import Region

Interval = tuple[Tensor, Tensor]
"""Elementwise lower and upper bounds, each ``[B, *shape]``."""

BackwardStep = tuple[list[Tensor], "Tensor | None"]
"""One step of a backward (linear) bound: coefficients on each input, and a constant ``[B, S]`` (None: 0)."""

WindowStep = tuple[list[Tensor], list[At], "Tensor | None"]
""":class:`BackwardStep` on windows: each input's coefficients, their windows' offsets, the constant."""


class Unsupported(Exception):
    """Raised by :meth:`BoundOp.from_call` for a configuration it cannot bound (the message says which).

    The tracer turns it into a ``ValueError`` that also names the layer or
    function and where in the model it is.
    """


class BoundOp(ABC):
    """One operation of the traced network, as the bound propagation sees it.

    Subclasses implement :meth:`interval` (always) and :meth:`backward`
    (linear bounds; ``None`` where there are none), and build themselves from
    a traced call in :meth:`from_call`. Flags tell the driver what the op is,
    so that it never needs to know an op's type:

    * ``linear``: the output is an affine function of the inputs; backward
      bounds pass through it exactly, so the margin specification is folded
      through it even by ``"ibp"`` (CROWN-IBP);
    * ``relaxed``: :meth:`backward` uses the interval bounds of the inputs
      (a linear relaxation), so ``"crown"`` tightens those bounds first;
    * ``fan_in``: multiply-adds per output element of one backward pass,
      for the cost model that decides where CROWN-IBP uses CROWN;
    * ``pointwise``: each output entry depends on one input entry and its
      :meth:`interval` is exact given the input's bounds (the activations):
      a backward bound on its output cannot beat that interval, so full
      CROWN spends no rows on it;
    * ``tunable``: :meth:`backward` has free parameters (α-CROWN's lower
      slopes): the op implements :meth:`backward_tuned`,
      :meth:`initial_params` and :meth:`project`.
    * ``is_reshape``: the identity on the values with a new shape (flatten,
      eval-mode dropout): a reshape of the input is still the input region.
    """

    linear: ClassVar[bool] = False
    relaxed: ClassVar[bool] = False
    pointwise: ClassVar[bool] = False
    tunable: ClassVar[bool] = False
    is_reshape: ClassVar[bool] = False
    fan_in: int = 1

    @classmethod
    def from_call(cls, call: Call) -> BoundOp:
        """The op for one traced call of a registered module or function; raise :class:`Unsupported` to refuse."""
        return cls()

    @abstractmethod
    def interval(self, ins: list[Interval]) -> Interval:
        """Bounds of the output given interval bounds of the inputs (sound; as tight as cheaply possible)."""
        ...  # every op bounds its output from its inputs' intervals

    def backward(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]]) -> BackwardStep | None:
        """Linear lower bound of ``a · out`` in terms of the inputs.

        ``a``: ``[B, S, *out]`` (``S`` specification rows per example);
        ``ins``: interval bounds of the inputs (``[B, *in]`` each);
        ``in_shapes``: the inputs' shapes without the batch dimension.
        Returns ``(coefs, const)`` with ``a · out ≥ Σ_k coefs[k] · in_k + const``
        over the inputs' intervals, coefficients ``[B, S, *in_k]``, ``const``
        ``[B, S]`` or None. ``None`` instead of a pair: this op has no linear
        bound and the driver uses its output interval there.
        """
        return None

    def backward_window(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]],
                        at: At) -> WindowStep | None:
        """:meth:`backward` for coefficients on a spatial window of the output (see :mod:`.windows`).

        ``a``: ``[B, S, C, h, w]``, zero outside the window whose corner is at
        ``at = (top, left)`` in the output's ``H × W`` map; ``ins`` are the
        full interval bounds. Returns each input's coefficients as a window
        with its offset in that input's map, and the constant; ``None``: the
        op has no window form and the driver pads ``a`` to the full map.
        The default serves pointwise ops: the same window of the input.
        """
        if not self.pointwise:
            return None
        size = (a.shape[-2], a.shape[-1])
        step = self.backward(a, [crop_interval(t, at, size) for t in ins], [tuple(a.shape[2:])])
        if step is None:
            return None
        return step[0], [at], step[1]

    def needs_bounds(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Which bounds of a relaxed op's input need to be tight: boolean masks ``(lower, upper)`` shaped like ``lo``.

        Full CROWN computes backward bounds only for these; the others keep
        their interval bounds. The default is both sides of every entry; ReLU
        needs only the unstable entries (the interval straddles 0): elsewhere
        its relaxation is exact whatever the bounds.
        """
        every = torch.ones_like(lo, dtype=torch.bool)
        return every, every

    def input_interval(self, region: Region) -> Interval:
        """Bounds of the output when the op is applied to the model input itself, over ``region``.

        ``region`` is the ball intersected with the box. The default uses
        the region's box; affine ops override it to use the ball too.
        """
        return self.interval([region.box()])

class TunableOp(BoundOp):
    """An op whose :meth:`backward` has free parameters that α-CROWN optimizes (e.g. ReLU's lower slope)."""

    tunable: ClassVar[bool] = True

    @abstractmethod
    def backward_tuned(self, a: Tensor, ins: list[Interval], in_shapes: list[tuple[int, ...]],
                       params: Tensor) -> BackwardStep:
        """:meth:`backward` of a ``tunable`` op with its free parameters ``params`` (shaped like ``a``).

        Sound for every value: the op projects ``params`` onto their feasible set itself.
        """

    @abstractmethod
    def initial_params(self, a: Tensor, ins: list[Interval]) -> Tensor:
        """A ``tunable`` op's parameters before optimization (the plain CROWN relaxation's), shaped like ``a``."""

    def project(self, params: Tensor) -> Tensor:
        """The nearest feasible parameters (α-CROWN's projected gradient step)."""
        return params



@dataclass
class Call:
    """One traced call, as :meth:`BoundOp.from_call` sees it.

    ``module`` is the called module for a layer (else None); ``target`` the
    function, or the method name for a ``Tensor`` method. ``args`` and
    ``kwargs`` are the raw traced arguments: use :meth:`const` and
    :meth:`option` to read non-tensor values. ``tensors`` are the positions
    in ``args`` of the traced tensors that become the op's inputs, in order.
    """

    kind: str                                   # "call_module" | "call_function" | "call_method"
    target: Any
    # Any, not nn.Module | None: ops read their own layer's attributes (weight, running_mean, ...)
    module: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    tensors: list[int]
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    where: str                                  # "layer 'a.b' (torch.nn....)" or "torch.sin in 'a' (...)"
    _const: Callable[[Any], Any] = field(repr=False, default=lambda a: a)

    def const(self, arg: Any) -> Any:
        """The value of a non-tensor argument (a literal, or a constant computed from buffers); None if traced."""
        return self._const(arg)

    def option(self, position: int, name: str, default: Any = None) -> Any:
        """A function argument given by ``position`` in ``args`` or by keyword ``name``, else ``default``."""
        if name in self.kwargs:
            return self.const(self.kwargs[name])
        if position < len(self.args):
            return self.const(self.args[position])
        return default

    def only_first_tensor(self) -> None:
        """Refuse a call where anything but the first argument depends on the input (e.g. a traced weight)."""
        if self.tensors != [0]:
            raise Unsupported("only its first argument may depend on the input")


OpType = TypeVar("OpType", bound=type)

# The one table: module classes, functions, and Tensor method names (strings) -> op class.
_REGISTRY: dict[Any, type[BoundOp]] = {}


def bound_op(*targets: Any) -> Callable[[OpType], OpType]:
    """Class decorator: register a :class:`BoundOp` subclass for ``targets``.

    A target is an ``nn.Module`` subclass (its subclasses are covered too),
    a function as the traced graph calls it (``F.relu``, ``torch.relu``,
    ``operator.add``, ...), or a string naming a ``Tensor`` method
    (``"relu"`` for ``x.relu()``). A plain Python function of your own is
    kept as one call by the tracer (not traced into) when the model calls it
    by a global name, so it can be registered like a built-in one.
    Registering a target twice replaces the earlier op (last one wins).
    """

    def register(cls: OpType) -> OpType:
        for t in targets:
            _REGISTRY[t] = cls
        return cls

    return register


def lookup_module(module: nn.Module) -> type[BoundOp] | None:
    """The op registered for ``module``'s class or its nearest registered base class."""
    for cls in type(module).__mro__:
        op = _REGISTRY.get(cls)
        if op is not None:
            return op
    return None


def lookup_call(target: Any) -> type[BoundOp] | None:
    """The op registered for a function or a ``Tensor`` method name."""
    try:
        return _REGISTRY.get(target)
    except TypeError:         # an unhashable callable can not have been registered
        return None


def leaf_functions() -> tuple[Callable[..., Any], ...]:
    """Registered plain Python functions from outside torch: the tracer keeps each as one call.

    torch's own functions reach the graph as single calls anyway (through
    ``__torch_function__``); a user function would be traced into without this.
    """
    return tuple(t for t in _REGISTRY if inspect.isfunction(t) and not t.__module__.startswith("torch"))


def leaf_module_types() -> tuple[type, ...]:
    """Registered module classes: the tracer keeps a call of exactly one of these as one node."""
    return tuple(t for t in _REGISTRY if inspect.isclass(t))


def supported_layers() -> list[str]:
    """Names of the registered module classes, for error messages."""
    return sorted({t.__name__ for t in leaf_module_types()})


_NAMESPACES: tuple[tuple[Any, str], ...] = (
    (torch.nn.functional, "torch.nn.functional"), (torch, "torch"), (torch.special, "torch.special"),
    (operator, "operator"),
)


def qualified_name(target: Any) -> str:
    """A readable dotted name of a traced function (``torch.nn.functional.gelu``) or method (``torch.Tensor.sin``)."""
    if isinstance(target, str):
        return f"torch.Tensor.{target}"
    name = getattr(target, "__name__", None)
    if name is not None:
        for namespace, prefix in _NAMESPACES:
            if getattr(namespace, name, None) is target:
                return f"{prefix}.{name}"
        module = getattr(target, "__module__", None)
        return f"{module}.{getattr(target, '__qualname__', name)}" if module else name
    return repr(target)


def type_name(obj: Any) -> str:
    """``torch.nn.modules.activation.SiLU``: the full dotted name of an object's class."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"

