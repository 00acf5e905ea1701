"""Pad-to-square and centre-crop geometry, checked on images whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hxr_model.data.resizing import to_square


def test_pad_keeps_the_whole_wide_image_between_black_bands() -> None:
    wide = np.ones((20, 40), np.float32)  # padded to 40 x 40: rows 10-29 are the image
    expected = np.array([0, 255, 255, 0], np.uint8)[:, None].repeat(4, axis=1)
    np.testing.assert_array_equal(to_square(wide, 4, "pad"), expected)


def test_crop_keeps_the_centre_of_a_tall_image() -> None:
    tall = np.zeros((60, 20), np.float32)
    tall[20:40] = 1.0  # the centred 20 x 20 square is all ones
    np.testing.assert_array_equal(to_square(tall, 5, "crop"), np.full((5, 5), 255, np.uint8))


def test_shrinking_averages_areas() -> None:
    checker = np.kron(np.array([[0.0, 1.0], [1.0, 0.0]]), np.ones((8, 8))).astype(np.float32)
    np.testing.assert_array_equal(to_square(checker, 2), [[0, 255], [255, 0]])
    # A 2 x 2 pixel pattern averaged into each output pixel gives its mean.
    fine = np.tile(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), (4, 4))
    np.testing.assert_array_equal(to_square(fine, 4), np.full((4, 4), 128, np.uint8))


@pytest.mark.parametrize("size", [28, 64])
def test_enlarging_and_same_size_keep_flat_regions(size: int) -> None:
    flat = np.full((28, 28), 0.5, np.float32)
    out = to_square(flat, size)
    assert out.shape == (size, size) and out.dtype == np.uint8
    assert np.all(out == 128)
