"""The interface every training objective implements, and the registry the CLI reads its choices from."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..options import Options


@dataclass(frozen=True)
class NoOptions(Options):
    """A method without options (standard training)."""


class Method(ABC):
    """A training objective: ``loss(model, x, y, index) -> (loss, stats)``.

    ``x`` are float inputs in ``[0, 1]``, ``index`` their dataset indices. The
    model is in train mode on entry; attacks switch it to eval mode and back
    themselves, on the plain module (``maxmargin.distributed.unwrap``) when
    ``model`` is a DistributedDataParallel wrapper. ``stats`` holds plain floats for the progress bar and
    metrics. ``step`` is set by the training loop before each call, for
    objectives with schedules.

    A subclass declares its options as a frozen dataclass in ``Options``
    (fields made by :func:`maxmargin.options.option`), whose field names are
    the constructor's keywords; :func:`register` adds it to the registry. The
    constructor may also take any of ``norm``, ``num_examples`` and
    ``device``: the training loop passes those from the run.
    """

    name: ClassVar[str] = "method"
    Options: ClassVar[type[Options]] = NoOptions
    # old flat config keys (runs written before per-method tables) -> option names
    legacy_keys: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.step = 0

    @abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The training loss of one batch and its statistics."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def to(self, device: torch.device | str) -> Method:
        return self

    def sync(self) -> None:
        """Make per-process state identical across ranks (before evaluations and checkpoints)."""
        return None

    def metrics(self) -> dict[str, float]:
        """Extra columns for ``metrics.csv`` at each evaluation (e.g. MMA's mean radius)."""
        return {}


M = TypeVar("M", bound=type[Method])
_REGISTRY: dict[str, type[Method]] = {}
CONTEXT = ("norm", "num_examples", "device")


def ramped_eps(eps: float, step: int, ramp_steps: int) -> float:
    """The radius at training ``step`` when it grows linearly from 0 to ``eps`` over ``ramp_steps`` (0: no ramp).

    PGDLS (the MMA paper's PGD baseline) and MART share it: a network trained at
    the full radius from its first step can stall at a low clean accuracy.
    """
    return eps if ramp_steps <= 0 else eps * min(1.0, (step + 1) / ramp_steps)


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a :class:`Method` subclass trainable as ``method = "name"``.

    The class's ``Options`` must be a frozen dataclass whose fields the
    constructor takes as keywords; anything else is a ``TypeError`` here, at
    import, rather than at the first training step.
    """
    def add(cls: M) -> M:
        opts = cls.Options
        if not (isinstance(opts, type) and issubclass(opts, Options) and is_dataclass(opts)
                and opts.__dataclass_params__.frozen):
            raise TypeError(f"{cls.__name__}.Options must be a frozen dataclass subclassing maxmargin.options.Options")
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        missing = [f.name for f in fields(opts) if f.name not in params and not takes_any]
        if missing:
            raise TypeError(f"{cls.__name__}.__init__ does not take the option(s) {', '.join(missing)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


def method_names() -> list[str]:
    """Names of the registered methods, in registration order."""
    return list(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The registered class called ``name``; a :class:`UserError` lists the names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def build(name: str, options: Options | None = None, *, norm: str = "linf", num_examples: int = 0,
          device: torch.device | str = "cpu") -> Method:
    """An instance of the method ``name`` with ``options`` (its defaults if ``None``) and the run's context."""
    cls = get_method(name)
    opts = cls.Options() if options is None else options
    if not isinstance(opts, cls.Options):
        raise TypeError(f"method {name!r} takes {cls.Options.__name__}, got {type(opts).__name__}")
    params = inspect.signature(cls.__init__).parameters
    context = {"norm": norm, "num_examples": num_examples, "device": device}
    kwargs = {k: v for k, v in context.items() if k in params}
    return cls(**kwargs, **opts.to_dict())
