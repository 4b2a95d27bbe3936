"""CUDA-graph replay of the PGD loop, and of AN-PGD's PGD + bisection.

On a small model (LeNet5 at batch 50) a PGD step is a few dozen tiny
kernels, and on a GPU the time goes into Python and kernel launches, not
arithmetic. Capturing the whole K-step loop once and replaying it launches
it as one graph. The arithmetic is the eager loop's, kernel for kernel: both
paths call the same function. AN-PGD in the paper's form (PGD, then the
bisection along its direction: fixed shapes, no host syncs) is captured as
one graph the same way; the secant search's shrinking subsets stay eager.

Rules that keep a replay correct:

* the random start is drawn outside the graph, so it consumes the RNG
  exactly as the eager path does;
* batches are padded (by repeating the first row) up to a bucket size, so a
  handful of graphs serve every subset size; in eval mode examples do not
  interact, so the padding rows change nothing;
* a graph reads the parameters' memory: it is keyed on their addresses and
  dtypes, and on the autocast state, so moving or replacing the parameters
  captures a new one (in-place optimizer updates are seen by the replay).

Off by default; ``set_cuda_graphs(True)`` (config ``cuda_graphs = true``)
switches it on for CUDA inputs. A model that cannot be captured (it syncs
with the host in ``forward``, say) falls back to the eager loop with one
warning.
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..losses import Objective
from ..norms import Norm
from ._common import check_labels
from .steps import pgd_loop

_state = {"enabled": False}
_graphs: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()
_BUCKET = 16


def set_cuda_graphs(enabled: bool) -> None:
    """Replay PGD loops on CUDA inputs as captured CUDA graphs (no effect on CPU inputs)."""
    _state["enabled"] = bool(enabled)


def cuda_graphs_enabled() -> bool:
    return _state["enabled"]


@contextmanager
def cuda_graphs(enabled: bool = True) -> Iterator[None]:
    """Context manager form of :func:`set_cuda_graphs`."""
    before = _state["enabled"]
    _state["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _state["enabled"] = before


def usable(x: Tensor) -> bool:
    return _state["enabled"] and x.is_cuda and not torch.cuda.is_current_stream_capturing()


def _bucket(n: int) -> int:
    return -(-n // _BUCKET) * _BUCKET


Body = Callable[[list[Tensor], int, "Callable[[Tensor], None] | None"], tuple[Tensor, ...]]


class _Graphed:
    """One captured ``body`` for inputs of ``size`` rows; inputs are copied into its static buffers.

    ``body(buffers, steps, first_logits)`` runs on the buffers (``buffers[1]``
    holds the labels) and returns a tuple of tensors with one row per input row.
    """

    def __init__(self, body: Body, inputs: tuple[Tensor, ...], steps: int, size: int) -> None:
        self.bufs = [t[:1].expand(size, *t.shape[1:]).clone() for t in inputs]
        self.classes = 0
        labels = inputs[1]

        def seen(logits: Tensor) -> None:
            self.classes = logits.shape[1]
            check_labels(logits, labels)

        def run(k: int, first: Callable[[Tensor], None] | None = None) -> tuple[Tensor, ...]:
            return body(self.bufs, k, first)

        self.capture(run, seen, steps)

    def capture(self, run: Callable[..., tuple[Tensor, ...]], seen: Callable[[Tensor], None], steps: int) -> None:
        """Warm up (cuDNN/cuBLAS choose kernels and workspaces), then capture ``run(steps)`` into a graph."""
        device = self.bufs[0].device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run(1, seen)
            run(1)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run(steps)

    def replay(self) -> None:
        self.graph.replay()

    def __call__(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        n, size = inputs[0].shape[0], self.bufs[0].shape[0]
        check_labels(torch.empty(0, self.classes), inputs[1])
        rows = None if n == size else torch.arange(size, device=inputs[0].device).clamp_(max=n - 1)
        for buf, src in zip(self.bufs, inputs):
            if rows is None:
                buf.copy_(src)
            else:   # gather straight into the static buffer: one kernel, no temporary
                torch.index_select(src, 0, rows, out=buf)
        self.replay()
        return tuple(o[:n].clone() for o in self.out)


def _signature(model: nn.Module) -> tuple:
    """What a captured graph silently depends on besides its inputs."""
    tensors = tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))
    amp = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    return tensors, amp, tuple(m.training for m in model.modules())


def graphed(model: nn.Module, tag: tuple, body: Body, inputs: tuple[Tensor, ...], steps: int,
            first_logits: Callable[[Tensor], None] | None = None) -> tuple[Tensor, ...]:
    """``body(list(inputs), steps, first_logits)``, replayed from a CUDA graph captured on first use.

    ``tag`` names everything ``body`` closes over besides ``model`` (norm,
    losses, box, search steps): graphs are cached per model under ``tag``,
    the padded batch size, the inputs' shapes and dtypes, and ``steps``.
    ``inputs[0]`` is the batch and ``inputs[1]`` the labels; every input has
    one row per example. Falls back to the eager call when a capture fails.
    """
    entry = _graphs.get(model)
    sig = _signature(model)
    if entry is None or entry["signature"] != sig:
        # new model, or its parameters moved: old graphs would read freed memory
        entry = _graphs[model] = {"signature": sig, "graphs": {}, "broken": False}
    if entry["broken"] or steps == 0:
        return body(list(inputs), steps, first_logits)
    size = _bucket(inputs[0].shape[0])
    key = (tag, size, tuple((tuple(t.shape[1:]), t.dtype) for t in inputs), steps)
    g = entry["graphs"].get(key)
    if g is None:
        try:
            g = entry["graphs"][key] = _Graphed(body, inputs, steps, size)
        except RuntimeError as err:
            entry["broken"] = True
            warnings.warn(f"CUDA graph capture failed ({err}); running the attack eagerly", stacklevel=3)
            return body(list(inputs), steps, first_logits)
    return g(inputs)


def graphed_pgd_loop(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: Norm, eps: Tensor,
                     steps: int, step: Tensor, objective: Objective, lo: float, hi: float,
                     first_logits: Callable[[Tensor], None] | None = None,
                     clean_logits: Tensor | None = None) -> Tensor:
    """:func:`pgd_loop` replayed from a CUDA graph captured on first use (``eps``, ``step``: shape ``[B]``).

    ``clean_logits``, when given, are one more padded input: an objective that
    reads them sees its own rows, padding rows included.
    """
    def body(b: list[Tensor], k: int, first: Callable[[Tensor], None] | None = None) -> tuple[Tensor, ...]:
        xx, yy, x0, e, st, *clean = b
        return (pgd_loop(model, xx, yy, x0.clone(), norm, e, k, st, objective, lo, hi, first,
                         clean_logits=clean[0] if clean else None),)

    inputs = (x, y, x_adv.detach(), eps, step) + (() if clean_logits is None else (clean_logits,))
    return graphed(model, ("pgd", norm.name, objective, lo, hi), body, inputs, steps, first_logits)[0]
