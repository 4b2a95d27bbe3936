"""Tracing a model into a list of bound ops, each looked up in the registry.

``torch.fx`` records the forward pass; every call of a module or function
that depends on the input becomes a :class:`Node` whose op comes from
:mod:`.registry`. Calls that depend only on the model's own tensors (say a
normalization buffer's ``.view(1, 3, 1, 1)``) are evaluated once, as constants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, fx, nn

from .registry import (
    BoundOp,
    Call,
    Interval,
    Unsupported,
    leaf_functions,
    leaf_module_types,
    lookup_call,
    lookup_module,
    qualified_name,
    supported_layers,
    type_name,
)


class Input(BoundOp):
    """The model's input (node 0): its bounds are the region's box, passed in as the one input."""

    def interval(self, ins: list[Interval]) -> Interval:
        return ins[0]


@dataclass
class Node:
    """One traced operation: ``op`` applied to earlier nodes ``inputs``; node 0 is the input, the last the logits."""

    op: BoundOp
    inputs: list[int]
    shape: tuple[int, ...]          # per example, without the batch dimension
    fan_in: int = 1                 # multiply-adds per output element of a backward pass
    name: str = ""                  # the layer or function and where it is, for messages

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class _Tracer(fx.Tracer):
    """fx's tracer, keeping registered module classes and registered Python functions as single calls."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=leaf_functions())
        self._leaves = set(leaf_module_types())

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # exactly a registered class: a subclass may override forward, so it is traced into
        return type(m) in self._leaves or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, example: Tensor) -> list[Node]:
    """The model as a list of :class:`Node` in topological order; node 0 is the input, the last the logits.

    Raises ``ValueError`` naming the layer (module path and class) or the
    function (and the module whose forward calls it) that no registered op covers.
    """
    from torch.fx.passes.shape_prop import ShapeProp

    tracer = _Tracer()
    wrapped = tracer.is_leaf_module(model, "")
    root = nn.Sequential(model) if wrapped else model     # a bare layer: fx traces into the root, so give it one
    try:
        gm = fx.GraphModule(root, tracer.trace(root))
        ShapeProp(gm).propagate(example[:1])
    except ValueError:
        raise
    except Exception as err:     # fx raises many kinds for untraceable models and shape mismatches
        raise ValueError(f"certified_margin cannot trace {type(model).__name__} on inputs of shape "
                         f"{tuple(example.shape[1:])}: {type(err).__name__}: {err}") from None

    index: dict[fx.Node, int] = {}
    nodes: list[Node] = []
    consts: dict[fx.Node, Any] = {}
    result: Any = None

    def const(arg: Any) -> Any:
        """Literals as they are; traced values None; constants (also inside lists and tuples) their value."""
        return fx.node.map_arg(arg, lambda a: consts.get(a))

    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        if n.op == "output":
            result = n.args[0]
            break
        if n.op == "get_attr":
            consts[n] = _attr(gm, n.target)
            continue
        traced = [a for a in n.all_input_nodes if a in index]
        if n.op != "placeholder" and not traced:
            consts[n] = _evaluate_constant(gm, n, const)    # e.g. a normalization buffer's .view(1, 3, 1, 1)
            continue
        if meta is None or not hasattr(meta, "shape"):    # sizes and other non-tensor values
            consts[n] = n.meta.get("val")
            continue
        shape = tuple(meta.shape[1:])
        if n.op == "placeholder":
            op: BoundOp = Input()
            inputs: list[int] = []
            where = "the input"
        else:
            positions = [k for k, a in enumerate(n.args) if isinstance(a, fx.Node) and a in index]
            module = gm.get_submodule(str(n.target)) if n.op == "call_module" else None
            call = Call(kind=n.op, target=n.target, module=module,
                        args=tuple(n.args), kwargs=dict(n.kwargs), tensors=positions,
                        in_shapes=[nodes[index[n.args[k]]].shape for k in positions], out_shape=shape,
                        where=_where(n, gm, model, wrapped), _const=const)
            if {n.args[k] for k in positions} != set(traced):
                raise ValueError(f"certified_margin cannot bound {call.where}: a tensor computed from the input "
                                 "is passed by keyword or inside a list; pass it as a plain argument")
            op = _build(call)
            inputs = [index[n.args[k]] for k in positions]
            where = call.where
        index[n] = len(nodes)
        nodes.append(Node(op, inputs, shape, op.fan_in, where))
    if not isinstance(result, fx.Node) or result not in index or index[result] != len(nodes) - 1:
        raise ValueError(f"certified_margin needs a model whose forward returns one logits tensor "
                         f"({type(model).__name__} does not)")
    return nodes


def _build(call: Call) -> BoundOp:
    """The registered op for ``call``, or a ``ValueError`` naming what could not be bounded and where."""
    cls = lookup_module(call.module) if call.module is not None else lookup_call(call.target)
    if cls is None:
        raise ValueError(f"certified_margin cannot bound {call.where}; supported layers: "
                         f"{', '.join(supported_layers())}, their functional forms, residual sums and "
                         "arithmetic with constants (see maxmargin.bounds for adding an op)")
    try:
        return cls.from_call(call)
    except Unsupported as err:
        raise ValueError(f"certified_margin cannot bound {call.where}: {err}") from None


def _path(path: str, wrapped: bool) -> str:
    """A module path in the user's model (without the wrapper a bare layer was put in)."""
    if wrapped:
        path = path[2:] if path.startswith("0.") else "" if path == "0" else path
    return path


def _where(n: fx.Node, gm: fx.GraphModule, model: nn.Module, wrapped: bool) -> str:
    """``layer 'features.3' (torch.nn....SiLU)`` or ``torch.sin in 'block' (pkg.Block)``, for messages."""
    if n.op == "call_module":
        module = gm.get_submodule(str(n.target))
        path = _path(str(n.target), wrapped)
        return f"layer '{path}' ({type_name(module)})" if path else f"the model ({type_name(module)})"
    name = qualified_name(n.target)
    stack = list((n.meta.get("nn_module_stack") or {}).values())    # [(path, class), ...], innermost last
    path = _path(str(stack[-1][0]), wrapped) if stack else ""
    if path:
        cls = stack[-1][1]
        return f"{name} called in '{path}' ({cls.__module__}.{cls.__qualname__})"
    return f"{name} called in the forward of {type_name(model)}"


def _evaluate_constant(gm: fx.GraphModule, n: fx.Node, const: Any) -> Any:
    args, kwargs = const(n.args), const(n.kwargs)
    if n.op == "call_method":
        return getattr(args[0], str(n.target))(*args[1:], **kwargs)
    if n.op == "call_module":
        return gm.get_submodule(str(n.target))(*args, **kwargs)
    assert callable(n.target)    # call_function: fx stores the function itself
    return n.target(*args, **kwargs)


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, Tensor) else obj
