"""Per-example work split across ``torchrun`` ranks: the one place the commands shard and gather.

Library functions (:func:`~maxmargin.margin.estimate_margin`,
:func:`~maxmargin.certify.certified_margin`, the attack stage of
:func:`~maxmargin.evaluate.evaluate`) work on the examples one process is
given. :func:`map_examples` hands each rank every ``world``-th example,
runs such a function on them, and gives every rank all the per-example
outputs back in the original order. Without a process group it simply calls
the function, so one code path serves one process and many.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

from .distributed import gather_shards, rank_world, shard

Out = TypeVar("Out", Tensor, tuple)

__all__ = ["map_examples"]


def map_examples(fn: Callable[..., Out], *per_example: Tensor | None, **shared) -> Out:
    """``fn(*per_example, **shared)`` over all examples, each rank computing its shard.

    ``per_example``: tensors whose first dimension indexes the same ``N``
    examples (``None`` passes through as ``None``); ``shared``: keyword
    arguments every rank passes unchanged. ``fn`` returns a tensor or a tuple
    of tensors (or ``None``) with one row per example it was given; every
    rank gets them back with all ``N`` rows, in the original order.

    Every rank must call this with the same ``N``. Random draws inside ``fn``
    come from each rank's own generator, so a sharded run matches a
    one-process run exactly only where ``fn`` is deterministic.
    """
    given = [t for t in per_example if t is not None]
    if not given:
        raise ValueError("map_examples needs at least one per-example tensor")
    n = given[0].shape[0]
    if any(t.shape[0] != n for t in given):
        raise ValueError(f"per-example tensors disagree on the number of examples: "
                         f"{[t.shape[0] for t in given]}")
    if rank_world()[1] == 1:
        return fn(*per_example, **shared)
    out = fn(*(None if t is None else shard(t) for t in per_example), **shared)
    if isinstance(out, Tensor):
        return gather_shards(out, n)
    return tuple(None if t is None else gather_shards(t, n) for t in out)
