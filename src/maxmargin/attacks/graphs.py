"""CUDA-graph replay of the PGD loop.

On a small model (LeNet5 at batch 50) a PGD step is a few dozen tiny
kernels, and on a GPU the time goes into Python and kernel launches, not
arithmetic. Capturing the whole K-step loop once and replaying it launches
it as one graph. The arithmetic is the eager loop's, kernel for kernel.

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
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..losses import LossFn
from ..norms import Norm, bcast
from ._common import check_labels, input_grad

_state = {"enabled": False}
_graphs: "weakref.WeakKeyDictionary[nn.Module, dict[str, Any]]" = weakref.WeakKeyDictionary()
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


def pgd_loop(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: Norm, eps: Tensor, steps: int,
             step: Tensor, loss_fn: LossFn, lo: float, hi: float,
             first_logits: Callable[[Tensor], None] | None = None) -> Tensor:
    """``steps`` PGD iterations from ``x_adv``: the one loop both the eager and the graphed path run.

    ``first_logits`` sees the first iteration's logits (label checks; never
    during a capture, where a host sync is not allowed).
    """
    step = bcast(step, x)
    for k in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        if k == 0 and first_logits is not None:
            first_logits(logits)
        g = input_grad(loss_fn(logits, y).sum(), x_adv)
        delta = x_adv.detach() + step * norm.direction(g) - x
        x_adv = torch.clamp(x + norm.project(delta, eps), lo, hi)
    return x_adv.detach()


class _Graphed:
    """One captured loop for inputs of ``size`` rows; inputs are copied into its static buffers."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, norm: Norm, steps: int, loss_fn: LossFn,
                 lo: float, hi: float, size: int) -> None:
        shape = (size, *x.shape[1:])
        self.x = x[:1].expand(shape).clone()
        self.x0 = self.x.clone()
        self.y = y[:1].expand(size).clone()
        self.eps = torch.ones(size, dtype=x.dtype, device=x.device)
        self.step = torch.zeros(size, dtype=x.dtype, device=x.device)
        self.classes = 0

        def seen(logits: Tensor) -> None:
            self.classes = logits.shape[1]
            check_labels(logits, y)

        def run(k: int, first: Callable[[Tensor], None] | None = None) -> Tensor:
            return pgd_loop(model, self.x, self.y, self.x0.clone(), norm, self.eps, k, self.step, loss_fn, lo, hi,
                            first)

        self.capture(run, seen, steps)

    def capture(self, run: Callable[..., Tensor], seen: Callable[[Tensor], None], steps: int) -> None:
        """Warm up (cuDNN/cuBLAS choose kernels and workspaces), then capture ``run(steps)`` into a graph."""
        device = self.x.device
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

    def __call__(self, x: Tensor, y: Tensor, x0: Tensor, eps: Tensor, step: Tensor) -> Tensor:
        n, size = x.shape[0], self.x.shape[0]
        check_labels(torch.empty(0, self.classes), y)
        rows = None if n == size else torch.arange(size, device=x.device).clamp_(max=n - 1)
        for buf, src in ((self.x, x), (self.x0, x0), (self.y, y), (self.eps, eps), (self.step, step)):
            if rows is None:
                buf.copy_(src)
            else:   # gather straight into the static buffer: one kernel, no temporary
                torch.index_select(src, 0, rows, out=buf)
        self.replay()
        return self.out[:n].clone()


def _signature(model: nn.Module) -> tuple:
    """What a captured graph silently depends on besides its inputs."""
    tensors = tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))
    amp = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    return tensors, amp, tuple(m.training for m in model.modules())


def graphed_pgd_loop(model: nn.Module, x: Tensor, y: Tensor, x_adv: Tensor, norm: Norm, eps: Tensor,
                     steps: int, step: Tensor, loss_fn: LossFn, lo: float, hi: float,
                     first_logits: Callable[[Tensor], None] | None = None) -> Tensor:
    """:func:`pgd_loop` replayed from a CUDA graph captured on first use (``eps``, ``step``: shape ``[B]``)."""
    entry = _graphs.get(model)
    sig = _signature(model)
    if entry is None or entry["signature"] != sig:
        # new model, or its parameters moved: old graphs would read freed memory
        entry = _graphs[model] = {"signature": sig, "graphs": {}, "broken": False}
    if entry["broken"] or steps == 0:
        return pgd_loop(model, x, y, x_adv, norm, eps, steps, step, loss_fn, lo, hi, first_logits)
    size = _bucket(x.shape[0])
    key = (size, tuple(x.shape[1:]), x.dtype, y.dtype, norm.name, steps, loss_fn, lo, hi)
    g = entry["graphs"].get(key)
    if g is None:
        try:
            g = entry["graphs"][key] = _Graphed(model, x, y, norm, steps, loss_fn, lo, hi, size)
        except RuntimeError as err:
            entry["broken"] = True
            warnings.warn(f"CUDA graph capture of the PGD loop failed ({err}); running it eagerly",
                          stacklevel=3)
            return pgd_loop(model, x, y, x_adv, norm, eps, steps, step, loss_fn, lo, hi, first_logits)
    return g(x, y, x_adv.detach(), eps, step)
