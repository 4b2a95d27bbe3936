"""The interface every training objective implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn


class Method(ABC):
    """A training objective: ``loss(model, x, y, index) -> (loss, stats)``.

    ``x`` are float inputs in ``[0, 1]``, ``index`` their dataset indices. The
    model is in train mode on entry; attacks switch it to eval mode and back
    themselves, on the plain module (``maxmargin.distributed.unwrap``) when
    ``model`` is a DistributedDataParallel wrapper. ``stats`` holds plain floats for the progress bar and
    metrics. ``step`` is set by the training loop before each call, for
    objectives with schedules.
    """

    name = "method"

    def __init__(self) -> None:
        self.step = 0

    @abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The training loss of one batch and its statistics."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def to(self, device) -> "Method":
        return self

    def sync(self) -> None:
        """Make per-process state identical across ranks (before evaluations and checkpoints)."""
        return None
