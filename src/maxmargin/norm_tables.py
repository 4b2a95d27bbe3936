"""Settings that depend on the norm or the dataset, each in one table.

:mod:`maxmargin.norms` holds the norms' math; this module holds the numbers
the evaluation and the commands pick by norm (and dataset): ε grids, the
margin command's search cap, AutoAttack's norm names, the paper's PGD step
and the radius at which any input reaches the middle of the box. Adding a
norm or a dataset family means adding a row here, nowhere else.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from .attacks._common import Bounds

# ε grids per (dataset family, norm), as in the MMA paper's figures.
EPS_GRIDS: dict[tuple[str, str], list[float]] = {
    ("mnist", "linf"): [0.1, 0.2, 0.3, 0.4, 0.5],
    ("mnist", "l2"): [1.0, 2.0, 3.0, 4.0],
    ("cifar10", "linf"): [4 / 255, 8 / 255, 12 / 255, 16 / 255, 20 / 255, 24 / 255, 28 / 255, 32 / 255],
    ("cifar10", "l2"): [0.5, 1.0, 1.5, 2.0, 2.5],
}

# Where the paper's tables stop short of the figures' grid: MNIST L∞ 0.5 lets every input reach a gray
# image, so it is evaluated only as a gradient-masking check (quickstart leaves it out to save time).
TABLE_GRIDS: dict[tuple[str, str], list[float]] = {
    ("mnist", "linf"): [0.1, 0.2, 0.3, 0.4],
}

# Datasets that share a family's grids: 28×28 grayscale digits and clothes are MNIST-like.
FAMILIES: dict[str, str] = {"digits": "mnist", "mnist": "mnist", "fashion-mnist": "mnist"}

# Default cap of ``maxmargin margin``'s search: beyond every radius the grids above evaluate.
MARGIN_CAPS: dict[str, float] = {"linf": 0.5, "l2": 8.0}

# The names pyautoattack's ``AutoAttack(norm=...)`` takes.
AUTOATTACK_NORMS: dict[str, str] = {"linf": "Linf", "l2": "L2"}

# Paper protocol: PGD step as a fraction of ε, ε/40 for MNIST-shaped L∞ inputs, ε/4 for everything else.
PAPER_STEP_RATIOS: dict[tuple[str, tuple[int, ...]], float] = {("linf", (1, 28, 28)): 1 / 40}
PAPER_STEP_RATIO = 1 / 4

# How the distance from a corner of the box to its middle grows with the input's dimension d.
_REACH: dict[str, Callable[[float, int], float]] = {
    "linf": lambda half, d: half,
    "l2": lambda half, d: half * math.sqrt(d),
}


def family(dataset: str) -> str:
    """The dataset family whose grids ``dataset`` uses (``"mnist"`` or ``"cifar10"``)."""
    return FAMILIES.get(dataset, "cifar10")


def default_eps_grid(dataset: str, norm: str) -> list[float]:
    """The ε grid of the paper's figures for ``dataset`` under ``norm`` (a fresh list)."""
    return list(EPS_GRIDS[(family(dataset), norm)])


def table_eps_grid(dataset: str, norm: str) -> list[float]:
    """The ε grid of the paper's tables: the figures' grid without radii that are only a masking check."""
    key = (family(dataset), norm)
    return list(TABLE_GRIDS.get(key, EPS_GRIDS[key]))


def paper_step_ratio(norm: str, shape: tuple[int, ...]) -> float:
    """The paper protocol's PGD step over ε for inputs of ``shape`` (one example's, no batch dimension)."""
    return PAPER_STEP_RATIOS.get((norm, tuple(shape)), PAPER_STEP_RATIO)


def universal_eps(norm: str, shape: tuple[int, ...], bounds: Bounds) -> float:
    """A radius at which every input can be moved to the middle of the box (e.g. a gray image)."""
    return _REACH[norm]((bounds[1] - bounds[0]) / 2, math.prod(shape))
