"""Models mapping ``[0, 1]`` inputs to logits, by name or by a ``module:callable`` spec.

A config's ``model`` key names a registered model (:func:`model_names`) or
points at your own code as ``package.module:callable``. The callable is
called with the keywords ``in_channels``, ``num_classes`` and ``image_size``
and returns an ``nn.Module`` that maps ``[0, 1]`` inputs to logits (any
normalization is a layer inside it). The spec is stored in the run's
checkpoint, so ``maxmargin eval`` and ``maxmargin margin`` build the same
model again; the module must be importable there too (the current folder is
searched first, as ``python -m`` does). A module that calls
:func:`register_model` on import can be named in the config's ``plugins``.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UserError
from ..plugins import import_user_module
from .lenet5 import LeNet5
from .small_cnn import SmallCNN
from .wideresnet import PerImageStandardize, WideResNet

ModelFactory = Callable[..., nn.Module]


class MLP800(nn.Sequential):
    """784-800-800-10 ReLU MLP: the network of AMM's published MNIST recipe."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        d = in_channels * image_size * image_size
        super().__init__(nn.Flatten(), nn.Linear(d, 800), nn.ReLU(), nn.Linear(800, 800), nn.ReLU(),
                         nn.Linear(800, num_classes))


def _wrn28_4(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    return WideResNet(28, 4, num_classes=num_classes, in_channels=in_channels)


MODELS: dict[str, ModelFactory] = {"mlp800": MLP800, "lenet5": LeNet5, "small_cnn": SmallCNN, "wrn28_4": _wrn28_4}


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``factory(in_channels=, num_classes=, image_size=)`` available as ``model = "name"``."""
    MODELS[name] = factory


def model_names() -> list[str]:
    return list(MODELS)


def is_model_spec(name: str) -> bool:
    """``package.module:callable``: a model from the user's own code."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


def _import_spec(spec: str) -> ModelFactory:
    module, _, attr = spec.partition(":")
    obj = import_user_module(module, f"model {spec!r}")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"model {spec!r}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"model {spec!r}: {attr!r} is not callable")
    return obj


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Instantiate a registered model or a ``module:callable`` spec; a :class:`UserError` lists the names."""
    if is_model_spec(name):
        factory = _import_spec(name)
    elif name in MODELS:
        factory = MODELS[name]
    else:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, or give module:callable")
    model = factory(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["LeNet5", "SmallCNN", "MLP800", "WideResNet", "PerImageStandardize", "build_model", "MODELS",
           "register_model", "model_names", "is_model_spec"]
