"""Madry et al.'s MNIST network, used by the MMA paper for all MNIST models."""
from __future__ import annotations

from torch import Tensor, nn


class LeNet5(nn.Module):
    """conv 32 5×5 pad 2 → maxpool → conv 64 5×5 pad 2 → maxpool → FC 1024 → FC classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        side = image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 1024), nn.ReLU(), nn.Linear(1024, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
