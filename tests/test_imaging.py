"""magiceraser.imaging.image_grid: the one tiling of validation grids, evaluation grids and previews."""

from __future__ import annotations

import numpy as np
import pytest

from magiceraser.imaging import image_grid


def test_equal_cells_with_gaps_and_gray_cells():
    a = np.full((4, 5, 3), 10, np.uint8)
    g = np.full((4, 5), 99, np.uint8)
    grid = image_grid([[a, a, a], [g]], gap=2)
    assert grid.shape == (2 * 4 + 2, 3 * 5 + 2 * 2, 3)
    assert (grid[:4, :5] == 10).all() and (grid[:4, 5:7] == 255).all() and (grid[:4, 7:12] == 10).all()
    assert (grid[4:6] == 255).all()  # the gap between rows
    assert (grid[6:, :5] == 99).all() and (grid[6:, 5:] == 255).all()  # a short row is padded with white


def test_cells_of_different_sizes_and_row_gap():
    wide, tall = np.zeros((3, 8, 3), np.uint8), np.zeros((6, 2, 3), np.uint8)
    grid = image_grid([[wide, tall], [tall]], gap=1, row_gap=4, fill=7)
    assert grid.shape == (6 + 4 + 6, 8 + 1 + 2, 3)
    assert (grid[3:6, :8] == 7).all() and (grid[:6, 9:] == 0).all() and (grid[10:, :2] == 0).all()


def test_no_image_is_an_error():
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
