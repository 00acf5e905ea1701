"""Decoders: hand-computed grey levels for each DICOM/PNG/JPEG variant, one reason per bad file."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from radiograph_files import (
    assert_decodes_or_refuses,
    bomb_png,
    broken_files,
    byte_flips,
    corner_values,
    damage,
    dicom_bytes,
    jpeg_bytes,
    png_bytes,
    quadrants,
)

from hxr_model.data.decoding import decode_image_bytes
from hxr_model.data.problems import ImageProblem
from hxr_model.errors import DataError

LUT = (100, [0, 1000, 3000, 4095], 12)  # stored 100..103 -> these 12-bit outputs


@pytest.mark.parametrize(
    ("options", "stored", "expected"),
    [
        # No VOI: the image's own min..max becomes 0..1.
        ({}, [100, 350, 600, 1100], [0.0, 0.25, 0.5, 1.0]),
        (
            {"photometric": "MONOCHROME1", "bits_stored": 12},
            [0, 1024, 2048, 4095],
            [1.0, 1 - 1024 / 4095, 1 - 2048 / 4095, 0.0],
        ),
        # LINEAR window c=2048 w=1024 on 12 bits: ((v - 2047.5) / 1023 + 0.5), clipped.
        (
            {"bits_stored": 12, "window": (2048, 1024)},
            [1000, 2048, 2300, 3000],
            [0.0, 0.5 + 0.5 / 1023, 0.5 + 252.5 / 1023, 1.0],
        ),
        # Rescale 2s - 1000 first (stored 400..600 -> -200..200), then window c=0 w=200.
        (
            {"bits_stored": 12, "rescale": (2, -1000), "window": (0, 200)},
            [400, 500, 525, 600],
            [0.0, 0.5 + 0.5 / 199, 0.5 + 50.5 / 199, 1.0],
        ),
        # A VOI LUT wins over the window; values outside it clamp to its ends.
        (
            {"voi_lut": LUT, "window": (5000, 10)},
            [50, 101, 102, 200],
            [0.0, 1000 / 4095, 3000 / 4095, 1.0],
        ),
        (
            {"voi_lut": LUT, "photometric": "MONOCHROME1", "bits_stored": 12},
            [50, 101, 102, 200],
            [1.0, 1 - 1000 / 4095, 1 - 3000 / 4095, 0.0],
        ),
    ],
    ids=["mono2-16bit", "mono1-12bit", "window", "rescale+window", "voi-lut", "mono1+voi-lut"],
)
def test_dicom_grey_levels(options: dict, stored: list[int], expected: list[float]) -> None:
    image = decode_image_bytes(dicom_bytes(quadrants(stored), **options), "x.dcm")
    assert image.dtype == np.float32 and image.shape == (32, 32)
    assert corner_values(image) == pytest.approx(expected, abs=1e-5)


def test_dicom_without_preamble_is_read_by_its_name() -> None:
    data = dicom_bytes(quadrants([0, 10, 20, 40]))
    image = decode_image_bytes(data[132:], "IM0001.dcm")
    assert corner_values(image) == pytest.approx([0.0, 0.25, 0.5, 1.0])
    with pytest.raises(ImageProblem) as refused:
        decode_image_bytes(data[132:], "IM0001")
    assert refused.value.kind == "not-image"


def test_png_8_and_16_bit() -> None:
    eight = decode_image_bytes(png_bytes(quadrants([0, 64, 128, 255], dtype=np.uint8)))
    assert corner_values(eight) == pytest.approx([0.0, 64 / 255, 128 / 255, 1.0])
    sixteen = decode_image_bytes(png_bytes(quadrants([0, 1000, 30000, 65535])))
    assert corner_values(sixteen) == pytest.approx([0.0, 1000 / 65535, 30000 / 65535, 1.0])


def test_rgb_jpeg_becomes_luma() -> None:
    colours = [(200, 100, 50), (0, 0, 255), (255, 255, 255), (0, 255, 0)]
    image = np.zeros((32, 32, 3), np.uint8)
    for channel in range(3):
        image[..., channel] = quadrants([c[channel] for c in colours], dtype=np.uint8)
    grey = decode_image_bytes(jpeg_bytes(image), "x.jpg")
    luma = [(0.299 * r + 0.587 * g + 0.114 * b) / 255 for r, g, b in colours]
    assert grey.shape == (32, 32)
    assert corner_values(grey) == pytest.approx(luma, abs=3 / 255)


@pytest.mark.parametrize("name", sorted(broken_files()))
def test_each_broken_file_has_its_reason(name: str) -> None:
    content, kind = broken_files()[name]
    with pytest.raises(ImageProblem) as refused:
        decode_image_bytes(content, name)
    assert refused.value.kind == kind
    assert isinstance(refused.value, DataError)


def test_bomb_below_pillows_limit_is_refused_before_decoding() -> None:
    # 72 MP passes Pillow's own check; decoding it would allocate the pixels and then fail as
    # truncated ("corrupt"). "too-large" shows the header check ran first.
    with pytest.raises(ImageProblem) as refused:
        decode_image_bytes(bomb_png(8500, 8500), "big.png")
    assert refused.value.kind == "too-large"
    assert "8500x8500" in refused.value.reason


SEEDS = [
    png_bytes(quadrants([0, 1, 2, 3], dtype=np.uint8)),
    png_bytes(quadrants([0, 1000, 2000, 3000])),
    jpeg_bytes(quadrants([0, 80, 160, 240], dtype=np.uint8)),
    dicom_bytes(quadrants([0, 10, 20, 30]), voi_lut=LUT, photometric="MONOCHROME1"),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(["x.png", "x.dcm", "x"]))
def test_arbitrary_bytes_only_raise_image_problem(data: bytes, name: str) -> None:
    assert_decodes_or_refuses(data, name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), byte_flips(10_000, 8), st.integers(0, 10_000))
def test_damaged_real_files_only_raise_image_problem(
    seed: int, flips: list[tuple[int, int]], keep: int
) -> None:
    assert_decodes_or_refuses(damage(SEEDS[seed], flips, keep), "x.dcm" if seed == 3 else "x.png")
