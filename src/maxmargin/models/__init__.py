"""Models mapping ``[0, 1]`` inputs to logits, and a name registry for configs."""
from __future__ import annotations

from torch import nn

from .lenet5 import LeNet5
from .small_cnn import SmallCNN
from .wideresnet import PerImageStandardize, WideResNet

class MLP800(nn.Sequential):
    """784-800-800-10 ReLU MLP: the network of AMM's published MNIST recipe."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        d = in_channels * image_size * image_size
        super().__init__(nn.Flatten(), nn.Linear(d, 800), nn.ReLU(), nn.Linear(800, 800), nn.ReLU(),
                         nn.Linear(800, num_classes))


MODELS = {
    "mlp800": MLP800,
    "lenet5": LeNet5,
    "small_cnn": SmallCNN,
    "wrn28_4": lambda in_channels=3, num_classes=10, image_size=32: WideResNet(
        28, 4, num_classes=num_classes, in_channels=in_channels),
}


def build_model(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Instantiate a registered model; a ``ValueError`` lists the names."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return factory(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


__all__ = ["LeNet5", "SmallCNN", "MLP800", "WideResNet", "PerImageStandardize", "build_model", "MODELS"]
