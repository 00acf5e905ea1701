import pytest
import torch

from hxr_model.augment import LIGHT, SIMCLR, augment_batch


def images() -> torch.Tensor:
    batch = torch.full((4, 1, 32, 32), 0.2)
    batch[..., :16] = 0.8  # left half bright
    return batch


@pytest.mark.parametrize("spec", [LIGHT, SIMCLR])
def test_views_stay_in_range_and_keep_shape(spec) -> None:
    out = augment_batch(images(), spec, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


def test_views_are_reproducible_and_random() -> None:
    first = augment_batch(images(), SIMCLR, torch.Generator().manual_seed(5))
    second = augment_batch(images(), SIMCLR, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    augment_batch(images(), SIMCLR, generator)
    third = augment_batch(images(), SIMCLR, generator)
    assert torch.equal(first, second)
    assert not torch.allclose(first, third)


def test_light_augmentation_never_flips_the_anatomy() -> None:
    out = augment_batch(images(), LIGHT, torch.Generator().manual_seed(1))
    left, right = out[..., :12].mean(dim=(1, 2, 3)), out[..., 20:].mean(dim=(1, 2, 3))
    assert (left > right).all()


def test_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        augment_batch(torch.rand(2, 3, 8, 8), LIGHT, torch.Generator())
