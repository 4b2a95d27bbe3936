"""The per-norm, per-dataset tables: the paper's grids and the radius where every input reaches the box's middle."""
from __future__ import annotations

import math

import pytest

from maxmargin.norm_tables import (
    AUTOATTACK_NORMS,
    MARGIN_CAPS,
    default_eps_grid,
    paper_step_ratio,
    table_eps_grid,
    universal_eps,
)
from maxmargin.norms import get_norm


def test_grids_of_the_paper():
    assert default_eps_grid("digits", "linf") == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert table_eps_grid("mnist", "linf") == [0.1, 0.2, 0.3, 0.4]
    assert table_eps_grid("fashion-mnist", "l2") == default_eps_grid("mnist", "l2") == [1.0, 2.0, 3.0, 4.0]
    assert default_eps_grid("cifar100", "linf")[1] == 8 / 255
    grid = default_eps_grid("cifar10", "l2")
    grid.append(9.0)
    assert default_eps_grid("cifar10", "l2") == [0.5, 1.0, 1.5, 2.0, 2.5], "callers get a copy"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_norm_has_a_row_in_every_table(norm):
    get_norm(norm)
    assert norm in MARGIN_CAPS and norm in AUTOATTACK_NORMS
    assert universal_eps(norm, (1, 28, 28), (0.0, 1.0)) > 0


def test_universal_radius_and_paper_step():
    assert universal_eps("linf", (3, 32, 32), (0.0, 1.0)) == 0.5
    assert universal_eps("l2", (1, 28, 28), (0.0, 1.0)) == pytest.approx(14.0)
    assert universal_eps("l2", (3, 32, 32), (-1.0, 1.0)) == pytest.approx(math.sqrt(3072))
    assert paper_step_ratio("linf", (1, 28, 28)) == 1 / 40
    assert paper_step_ratio("l2", (1, 28, 28)) == paper_step_ratio("linf", (3, 32, 32)) == 1 / 4
