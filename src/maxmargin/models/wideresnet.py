"""Pre-activation WideResNet (Zagoruyko & Komodakis) behind per-image standardization.

The MMA paper's CIFAR-10 model is WRN-28-4 without dropout; inputs stay in
``[0, 1]`` and the standardization is the model's first layer, so attacks see
the raw image space.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..bounds.standardize import per_image_standardize


class PerImageStandardize(nn.Module):
    """``(x − mean(x)) / max(std(x), 1/sqrt(numel))`` per image, as TensorFlow's op.

    The arithmetic is :func:`maxmargin.bounds.per_image_standardize`, a declared
    op that the certified bounds know, called by its global name so that their
    tracer keeps it as one call.
    """

    def forward(self, x: Tensor) -> Tensor:
        return per_image_standardize(x)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(F.relu(self.bn2(o)))
        return o + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` for 32×32 inputs; WRN-28-4 by default."""

    def __init__(self, depth: int = 28, widen: int = 4, num_classes: int = 10, in_channels: int = 3,
                 standardize: bool = True) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.standardize = PerImageStandardize() if standardize else nn.Identity()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        layers = []
        cin = widths[0]
        for stage, cout in enumerate(widths[1:]):
            for i in range(n):
                layers.append(_Block(cin, cout, stride=(1 if stage == 0 or i > 0 else 2)))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        o = self.blocks(self.conv(self.standardize(x)))
        o = F.relu(self.bn(o))
        o = F.adaptive_avg_pool2d(o, 1).flatten(1)
        return self.fc(o)
