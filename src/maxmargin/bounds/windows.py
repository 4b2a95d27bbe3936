"""Backward rows as spatial windows: full CROWN's intermediate rows through convolutions at a fraction of the cost.

A row that bounds one neuron of a convolutional layer starts as a one-hot
over that layer and, going backwards, spreads only over the neuron's
receptive field: a few pixels of each feature map below it. Sent densely,
every row drags the whole ``C × H × W`` map of every layer beneath through
each step (for SmallCNN's second convolution: 196 positions where 9-100 carry
anything). Here a row is a window ``[B, S, C, h, w]`` of its node plus the
spatial offset ``at = (top, left)`` of the window's corner in the node's map,
the entries outside being zero. Ops that can (:meth:`BoundOp.backward_window`:
2-D convolutions, max pooling, activations, channel-wise affine maps, sums)
map a window to their inputs' windows; elsewhere the driver pads it back to
the full map (:func:`dense`) and goes on as before. The bounds are the same,
only cheaper (auto_LiRPA's "patches" serve the same end).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

At = tuple[int, int]
"""The spatial offset ``(top, left)`` of a window in its node's ``H × W`` map."""


def pair(v: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    """A 2-D layer option (kernel size, stride, padding, dilation) given as one number or two."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def spatial(shape: tuple[int, ...]) -> bool:
    """Whether a node of this shape (without the batch dimension) is a ``C × H × W`` map that windows apply to."""
    return len(shape) == 3


def crop(t: Tensor, at: At, size: tuple[int, int]) -> Tensor:
    """The window ``size`` at ``at`` of the last two dimensions of ``t``."""
    return t[..., at[0]:at[0] + size[0], at[1]:at[1] + size[1]]


def crop_interval(box: tuple[Tensor, Tensor], at: At, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Both bounds' window."""
    return crop(box[0], at, size), crop(box[1], at, size)


def dense(a: Tensor, at: At, shape: tuple[int, ...]) -> Tensor:
    """A window ``a`` (``[..., h, w]``) at ``at`` as the full ``[..., H, W]`` map of ``shape``, zero outside."""
    (h, w), (hh, ww) = a.shape[-2:], shape[-2:]
    return F.pad(a, (at[1], ww - at[1] - w, at[0], hh - at[0] - h))


def merge(a: Tensor, at: At | None, b: Tensor, bt: At | None, shape: tuple[int, ...]) -> tuple[Tensor, At | None]:
    """``a + b`` of two rows on the same node (windows or full maps): on the union of their windows."""
    if at is None or bt is None:
        full_a = a if at is None else dense(a, at, shape)
        full_b = b if bt is None else dense(b, bt, shape)
        return full_a + full_b, None
    top, left = min(at[0], bt[0]), min(at[1], bt[1])
    bottom = max(at[0] + a.shape[-2], bt[0] + b.shape[-2])
    right = max(at[1] + a.shape[-1], bt[1] + b.shape[-1])
    box = (bottom - top, right - left)
    return (dense(a, (at[0] - top, at[1] - left), box) + dense(b, (bt[0] - top, bt[1] - left), box)), (top, left)


def clip(coef: Tensor, top: int, left: int, shape: tuple[int, ...]) -> tuple[Tensor, At]:
    """A window whose corner ``(top, left)`` may lie outside the map (a convolution's padding), cut to the map.

    What falls outside multiplies padding (zeros), so dropping it is exact.
    A window wholly in the padding comes back empty, its corner inside the map.
    """
    hh, ww = shape[-2:]
    h, w = coef.shape[-2:]
    r0, c0 = min(max(0, -top), h), min(max(0, -left), w)
    r1, c1 = max(r0, min(h, hh - top)), max(c0, min(w, ww - left))
    return coef[..., r0:r1, c0:c1], (min(max(0, top + r0), hh), min(max(0, left + c0), ww))


def tiles(height: int, width: int, tile: int) -> list[tuple[At, tuple[int, int]]]:
    """The ``tile × tile`` blocks (smaller at the right and bottom edges) that cover an ``height × width`` map."""
    return [((top, left), (min(tile, height - top), min(tile, width - left)))
            for top in range(0, height, tile) for left in range(0, width, tile)]
