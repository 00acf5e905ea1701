"""Synthetic phantoms: deterministic, correctly shaped, balanced, lesion masks where the lesions
are, and scanner styles that change the pixels the way their parameters say."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hxr_model.data.phantoms import (
    PHANTOM_CLASSES,
    PhantomBatch,
    ScannerStyle,
    generate_phantoms,
    site_style,
)
from hxr_model.errors import DataError

NORMAL = PHANTOM_CLASSES.index("normal")
EMPHYSEMA = PHANTOM_CLASSES.index("emphysema")
LESIONS = [PHANTOM_CLASSES.index(name) for name in PHANTOM_CLASSES if name != "normal"]


def only(label: int) -> list[float]:
    return [1.0 if index == label else 0.0 for index in range(len(PHANTOM_CLASSES))]


def same_chests(label: int, count: int = 12, size: int = 64) -> PhantomBatch:
    """`count` chests of one class; the seed fixes anatomy and noise whatever the class."""
    return generate_phantoms(count, size, seed=5, class_balance=only(label))


def test_the_six_classes_are_distinct_label_names_with_normal_first() -> None:
    """The names themselves are pinned where users meet them, in the demo's run config
    (tests/server/test_settings_agree.py); here, what makes them usable as labels."""
    assert len(set(PHANTOM_CLASSES)) == len(PHANTOM_CLASSES) == 6
    assert PHANTOM_CLASSES[0] == "normal"
    assert all(name.isidentifier() and name.islower() for name in PHANTOM_CLASSES)


@pytest.mark.parametrize("size", [28, 128])
def test_shapes_dtypes_and_masks(size: int) -> None:
    batch = generate_phantoms(24, size, seed=1)
    assert batch.images.shape == (24, size, size) and batch.images.dtype == np.uint8
    assert batch.labels.shape == (24,) and batch.labels.dtype == np.int64
    assert batch.masks.shape == (24, size, size) and batch.masks.dtype == np.bool_
    normal = batch.labels == NORMAL
    assert not batch.masks[normal].any()
    assert batch.masks[~normal].any(axis=(1, 2)).all()
    # A radiograph, not a flat or saturated picture.
    assert 40 < batch.images.mean() < 200 and batch.images.std() > 25


def test_same_arguments_give_identical_bytes() -> None:
    style = site_style(3)
    first = generate_phantoms(20, 64, seed=7, style=style)
    second = generate_phantoms(20, 64, seed=7, style=style)
    assert first.images.tobytes() == second.images.tobytes()
    assert first.masks.tobytes() == second.masks.tobytes()
    assert np.array_equal(first.labels, second.labels)
    other = generate_phantoms(20, 64, seed=8, style=style)
    assert np.abs(other.images.astype(int) - first.images).mean() > 5


def test_class_balance_is_met_exactly() -> None:
    assert np.bincount(generate_phantoms(60, 28, seed=0).labels).tolist() == [10] * 6
    # 7 images over 6 equal weights: one class gets the spare image (largest remainder).
    assert sorted(np.bincount(generate_phantoms(7, 28, seed=0).labels).tolist()) == [1] * 5 + [2]
    skewed = generate_phantoms(10, 28, seed=0, class_balance=[3, 1, 0, 0, 0, 1])
    assert np.bincount(skewed.labels, minlength=6).tolist() == [6, 2, 0, 0, 0, 2]


def test_anatomy_does_not_depend_on_the_classes_drawn() -> None:
    mixed = generate_phantoms(12, 64, seed=5)
    normal = same_chests(NORMAL)
    healthy = mixed.labels == NORMAL
    assert healthy.any()
    assert np.array_equal(mixed.images[healthy], normal.images[healthy])


@pytest.mark.parametrize("label", LESIONS, ids=[PHANTOM_CLASSES[i] for i in LESIONS])
def test_masks_cover_where_the_lesion_changed_the_chest(label: int) -> None:
    """Against the same chests without disease, the pixels a lesion changed lie in its mask,
    inside the (dark) lung fields; lesions are denser than lung, emphysema is more lucent."""
    normal, sick = same_chests(NORMAL), same_chests(label)
    change = sick.images.astype(np.int64) - normal.images
    for image in range(len(change)):
        mask = sick.masks[image]
        assert mask.any()
        inside = np.abs(change[image][mask]).sum()
        assert inside >= 0.5 * np.abs(change[image]).sum()
        if label == EMPHYSEMA:
            assert change[image][mask].mean() < -10
        else:
            assert change[image][mask].mean() > 3
            assert normal.images[image][mask].mean() < normal.images[image].mean()
    share_inside = (np.abs(change) * sick.masks).sum() / np.abs(change).sum()
    assert share_inside > 0.8


def test_site_zero_is_neutral_and_other_sites_shift_intensities() -> None:
    assert site_style(0) == ScannerStyle()
    assert site_style(2, seed=1) == site_style(2, seed=1)
    assert site_style(2, seed=1) != site_style(2, seed=2)
    neutral = generate_phantoms(16, 64, seed=2, style=site_style(0)).images
    for site in range(1, 5):
        styled = generate_phantoms(16, 64, seed=2, style=site_style(site)).images
        assert abs(styled.mean() - neutral.mean()) > 5, site


def _neutral_and(style: ScannerStyle, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the same chests in the neutral style and in `style`, where neither clips."""
    neutral = generate_phantoms(8, size, seed=4).images.astype(np.float64)
    styled = generate_phantoms(8, size, seed=4, style=style).images.astype(np.float64)
    usable = (neutral > 30) & (neutral < 225) & (styled > 30) & (styled < 225)
    return neutral[usable], styled[usable]


def test_contrast_and_gamma_follow_the_display_curve() -> None:
    neutral, steeper = _neutral_and(ScannerStyle(contrast=1.25))
    slope = np.polyfit(neutral, steeper, 1)[0]
    assert slope == pytest.approx(1.25, abs=0.03)
    neutral, curved = _neutral_and(ScannerStyle(gamma=1.5))
    expected = 255 * (neutral / 255) ** 1.5
    assert np.abs(curved - expected).mean() < 1.5


def test_noise_adds_the_configured_spread() -> None:
    neutral, noisy = _neutral_and(ScannerStyle(noise=0.06))
    # Same noise draws scaled from 0.015 to 0.06: the difference has 0.045 x 255 spread.
    assert np.std(noisy - neutral) == pytest.approx(0.045 * 255, rel=0.1)


def test_blur_removes_fine_detail() -> None:
    # Detector noise is added after the blur, so compare noise-free renderings.
    def fine_detail(style: ScannerStyle) -> float:
        images = generate_phantoms(8, 128, seed=4, style=style).images.astype(np.float64)
        return float(np.abs(np.diff(images, 2, axis=2)).mean())

    sharp = fine_detail(ScannerStyle(noise=0))
    assert fine_detail(ScannerStyle(noise=0, blur=0.02)) < 0.5 * sharp


def test_zoom_enlarges_the_chest() -> None:
    def lung_area(style: ScannerStyle) -> float:
        return float(generate_phantoms(6, 64, 3, style, only(EMPHYSEMA)).masks.mean())

    assert lung_area(ScannerStyle(zoom=1.2)) / lung_area(ScannerStyle()) == pytest.approx(
        1.44, rel=0.1
    )


def test_marker_is_burnt_into_the_chosen_corner() -> None:
    style = ScannerStyle(marker_text="R", marker_corner=3, marker_strength=1.0, marker_size=0.1)
    marked = generate_phantoms(4, 128, seed=2, style=style).images
    plain = generate_phantoms(4, 128, seed=2).images
    corner = (slice(None), slice(96, 128), slice(96, 128))
    assert (marked[corner] == 255).sum(axis=(1, 2)).min() >= 20
    assert (plain[corner] == 255).sum() == 0
    away = (slice(None), slice(0, 96), slice(None))
    assert np.array_equal(marked[away], plain[away])


def test_empty_batch_keeps_its_shape() -> None:
    batch = generate_phantoms(0, 32, seed=0)
    assert batch.images.shape == (0, 32, 32) and batch.masks.shape == (0, 32, 32)
    assert batch.labels.shape == (0,)


@pytest.mark.parametrize(
    ("count", "size", "balance", "message"),
    [
        (4, 27, None, "28-512 px"),
        (4, 513, None, "28-512 px"),
        (-1, 64, None, "must not be negative"),
        (4, 64, [1, 1], "6 non-negative weights"),
        (4, 64, [0] * 6, "positive sum"),
        (4, 64, [1, -1, 1, 1, 1, 1], "non-negative"),
    ],
)
def test_bad_requests_are_refused(
    count: int, size: int, balance: list[float] | None, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        generate_phantoms(count, size, seed=0, class_balance=balance)


def test_invalid_scanner_styles_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ScannerStyle(gamma=0)
    with pytest.raises(ValueError, match="marker_text"):
        ScannerStyle(marker_text="X")
    with pytest.raises(ValueError, match="marker_corner"):
        dataclasses.replace(ScannerStyle(), marker_corner=4)
