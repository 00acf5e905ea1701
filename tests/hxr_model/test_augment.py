import pytest
import torch

from hxr_model.augment import (
    LIGHT,
    SCANNER_SHIFT,
    SIMCLR,
    AugmentationSpec,
    augment_batch,
    burn_in_text,
    collimate,
    gaussian_blur,
    sharpen,
)


def images() -> torch.Tensor:
    batch = torch.full((4, 1, 32, 32), 0.2)
    batch[..., :16] = 0.8  # left half bright
    return batch


@pytest.mark.parametrize("spec", [LIGHT, SCANNER_SHIFT, SIMCLR])
def test_views_stay_in_range_and_keep_shape(spec) -> None:
    out = augment_batch(images(), spec, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("spec", [SCANNER_SHIFT, SIMCLR])
def test_views_are_reproducible_and_random(spec) -> None:
    first = augment_batch(images(), spec, torch.Generator().manual_seed(5))
    second = augment_batch(images(), spec, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    augment_batch(images(), spec, generator)
    third = augment_batch(images(), spec, generator)
    assert torch.equal(first, second)
    assert not torch.allclose(first, third)


@pytest.mark.parametrize("spec", [LIGHT, SCANNER_SHIFT])
def test_fine_tuning_augmentation_never_flips_the_anatomy(spec) -> None:
    batch = torch.full((64, 1, 32, 32), 0.2)
    batch[..., :16] = 0.8
    out = augment_batch(batch, spec, torch.Generator().manual_seed(1))
    left, right = out[..., 8:24, :12].mean(dim=(1, 2, 3)), out[..., 8:24, 20:].mean(dim=(1, 2, 3))
    assert (left > right).all()


def spread(views: torch.Tensor) -> torch.Tensor:
    return views.amax(dim=(1, 2, 3)) - views.amin(dim=(1, 2, 3))


def test_scanner_shift_adds_borders_and_text_that_light_never_does() -> None:
    flat = torch.full((64, 1, 32, 32), 0.5)
    light = augment_batch(flat, LIGHT, torch.Generator().manual_seed(2))
    shifted = augment_batch(flat, SCANNER_SHIFT, torch.Generator().manual_seed(2))
    # A flat image stays flat under light augmentation (up to interpolation); borders and
    # burnt-in text put other levels into some of the scanner-shifted views.
    assert spread(light).max() < 1e-4
    assert (spread(shifted) > 0.05).sum() >= 16


def test_aspect_stretch_changes_width_against_height_within_its_range() -> None:
    """Only the stretch: a centred disc becomes an ellipse whose axes' ratio is in range and
    whose area is kept."""
    still = AugmentationSpec(crop_scale=(1.0, 1.0), rotation_degrees=0, translate_fraction=0,
                             brightness=0, contrast=0, gamma=0, aspect_ratio=0.5)  # fmt: skip
    coordinates = torch.linspace(-1, 1, 64)
    disc = (coordinates.view(-1, 1) ** 2 + coordinates.view(1, -1) ** 2 < 0.4**2).float()
    out = augment_batch(disc.expand(32, 1, 64, 64), still, torch.Generator().manual_seed(3)) > 0.5
    width = out.any(dim=2).sum(dim=(1, 2)).float()
    height = out.any(dim=3).sum(dim=(1, 2)).float()
    ratio = width / height
    assert (ratio > 1 / 1.5 - 0.1).all() and (ratio < 1.5 + 0.1).all()
    assert ratio.max() > 1.2 and ratio.min() < 1 / 1.2  # both ways, not just one
    area = out.sum(dim=(1, 2, 3)).float()
    assert ((area / disc.sum() - 1).abs() < 0.1).all()


def test_collimation_fills_exactly_the_borders() -> None:
    batch = torch.rand(2, 1, 10, 10)
    borders = torch.tensor([[0.2, 0.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0]])
    out = collimate(batch, borders, torch.tensor([0.9, 0.1]))
    assert out[0, 0, :, :2].eq(0.9).all() and out[0, 0, 7:, :].eq(0.9).all()
    assert torch.equal(out[0, 0, :7, 2:], batch[0, 0, :7, 2:])
    assert torch.equal(out[1], batch[1])


def test_burnt_in_text_is_bright_and_in_one_corner() -> None:
    batch = torch.full((8, 1, 64, 64), 0.3)
    out = burn_in_text(batch, torch.full((8,), 0.08), torch.Generator().manual_seed(3))
    assert torch.equal(
        out, burn_in_text(batch, torch.full((8,), 0.08), torch.Generator().manual_seed(3))
    )
    for image in out[:, 0]:
        changed = (image != 0.3).nonzero()
        assert len(changed) > 0
        assert image[image != 0.3].min() >= 0.7
        rows, columns = changed[:, 0], changed[:, 1]
        # All of it within one corner's quadrant, 8 % of the side high (about 5 px).
        assert (rows < 32).all() or (rows >= 32).all()
        assert (columns < 32).all() or (columns >= 32).all()
        assert rows.max() - rows.min() <= 6


def test_sharpening_overshoots_at_edges_and_blur_softens_them() -> None:
    edge = torch.full((1, 1, 16, 16), 0.3)
    edge[..., 8:] = 0.6
    sharpened = sharpen(edge, torch.tensor([1.0]), torch.tensor([1.0]))
    blurred = gaussian_blur(edge, torch.tensor([1.0]))
    assert sharpened[..., 7].max() < 0.3 and sharpened[..., 8].min() > 0.6
    assert blurred[..., 7].min() > 0.3 and blurred[..., 8].max() < 0.6
    with pytest.raises(ValueError, match="positive"):
        gaussian_blur(edge, torch.tensor([0.0]))


def test_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        augment_batch(torch.rand(2, 3, 8, 8), LIGHT, torch.Generator())
