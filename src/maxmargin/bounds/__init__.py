"""Sound bounds on a network's outputs over a norm ball intersected with the input box.

The model is traced with ``torch.fx`` (:mod:`.graph`) into a list of nodes,
each an instance of a **bound op**: a class with one interface
(:class:`BoundOp`) looked up in one table by the module or function it
covers (:mod:`.registry`). The ops, one file per family:

* :mod:`.affine`: Linear, Conv1d/2d (modules and ``F.linear``/``F.conv*d``),
  BatchNorm in eval mode, flatten/reshape, dropout in eval mode: exact;
* :mod:`.arithmetic`: residual sums and differences of two branches,
  arithmetic with constants (an input normalization): exact;
* :mod:`.pooling`: max pooling (relaxed) and average pooling, adaptive
  average pooling, ``mean`` (exact);
* :mod:`.activations`: ReLU, LeakyReLU, Sigmoid, Tanh (relaxed by two lines
  per neuron);
* :mod:`.standardize`: the per-image standardization
  :func:`per_image_standardize` (interval bounds only: linear bound
  propagation stops there and uses its interval).

Four methods give lower bounds of the margins ``f_y − f_j`` (``j ≠ y``),
driven by :mod:`.propagate` (:data:`METHODS`, loosest first):

* ``"ibp"``: interval bounds layer by layer (Gowal et al. 2018), with the
  margin specification folded into the linear ops after the last
  non-linearity, as CROWN-IBP does: much tighter than subtracting intervals;
* ``"crown-ibp"``: linear relaxations of every relaxed op propagated
  backwards to the input (Zhang et al. 2018), concretized exactly over the
  ball and the box; intermediate (pre-activation) bounds from CROWN where
  that is cheap and from intervals elsewhere (CROWN-IBP style: on LeNet5 and
  SmallCNN, every layer above the first convolution);
* ``"crown"``: full CROWN: every intermediate bound a relaxation uses comes
  from a backward pass, for the neurons whose relaxation depends on it
  (ReLU's unstable ones), in chunks of rows that bound the memory;
* ``"alpha-crown"``: full CROWN's intermediate bounds and the margins'
  lower ReLU slopes optimized by projected gradient ascent (Xu et al. 2021).

Every bound is intersected with the interval one, so no method is looser
than IBP.

Everything is vectorized over the batch and the specification rows; radii
are per example. Bounds are computed in the model's floating-point type:
pass a float64 model to rule out float32 rounding.

How to add an op
----------------
Write one class and register it; nothing else changes::

    from maxmargin.bounds import BoundOp, bound_op

    @bound_op(nn.Hardtanh, F.hardtanh, "hardtanh")   # module classes, functions, Tensor method names
    class Hardtanh(Elementwise):                     # or BoundOp / Affine
        relaxed = True                               # its backward uses its input's interval bounds
        @classmethod
        def from_call(cls, call):                    # read options from call.module or call.option(...)
            return cls(...)                          # raise Unsupported("why") to refuse a configuration
        def interval(self, ins): ...                 # output bounds from input bounds
        def lines(self, lo, hi): ...                 # Elementwise: two sound lines per neuron
        # or backward(self, a, ins, in_shapes) -> ([coef per input], const) for a general op;
        # return None from backward for an op with no linear bound (the driver uses its interval).

Affine maps subclass :class:`Affine` and give ``fn`` (``W z + b``),
``abs_fn`` (``|W| z``) and ``sq_fn`` (``W² z``); the rest, including the
bounds over the input ball when the map is applied to the input, follows.
A plain Python function registered with :func:`bound_op` is kept as a single
call by the tracer when the model calls it by a global name (that is how
:func:`per_image_standardize` works). A layer or function without an op
raises ``ValueError`` naming it and where it is in the model.
"""
from __future__ import annotations

from . import activations, affine, arithmetic, pooling, standardize  # noqa: F401  (registers the ops)
from .activations import Elementwise, LeakyRelu, Relu, Sigmoid, SShaped, Tanh
from .affine import Affine, BatchNorm, Conv, Linear, Reshape
from .arithmetic import Add, Scale, Shift
from .graph import Input, Node, trace
from .pooling import AdaptiveAvgPool, AvgPool, MaxPool, Mean
from .propagate import (
    ALPHA_STEPS,
    CHUNK_ENTRIES,
    CROWN_INTERMEDIATE_BUDGET,
    METHODS,
    Region,
    Reuse,
    interval_lower,
    layer_bounds,
    margin_lower_bounds,
)
from .registry import BoundOp, Call, Interval, TunableOp, Unsupported, bound_op
from .standardize import Standardize, per_image_standardize

Op = BoundOp    # the name before bound ops had a registry

__all__ = [
    "ALPHA_STEPS",
    "CHUNK_ENTRIES",
    "CROWN_INTERMEDIATE_BUDGET",
    "METHODS",
    "AdaptiveAvgPool",
    "Add",
    "Affine",
    "AvgPool",
    "BatchNorm",
    "BoundOp",
    "Call",
    "Conv",
    "Elementwise",
    "Input",
    "Interval",
    "LeakyRelu",
    "Linear",
    "MaxPool",
    "Mean",
    "Node",
    "Op",
    "Region",
    "Relu",
    "Reshape",
    "Reuse",
    "SShaped",
    "Scale",
    "Shift",
    "Sigmoid",
    "Standardize",
    "Tanh",
    "TunableOp",
    "Unsupported",
    "bound_op",
    "interval_lower",
    "layer_bounds",
    "margin_lower_bounds",
    "per_image_standardize",
    "trace",
]
