"""Intensity standardisation: deterministic, per image, undoes exposure changes, on by default."""

import pytest
import torch
from pydantic import ValidationError

from hxr_model.models import build_model
from hxr_model.standardisation import (
    DEFAULT_STANDARDISATION,
    EQUALISATION_LEVELS,
    PERCENTILE_BINS,
    IntensityStandardisation,
    StandardisationConfig,
    percentiles,
    standardise,
)


def chests(count: int = 3, size: int = 32) -> torch.Tensor:
    """Smooth 8-bit images with a bright blob: something like anatomy, not uniform noise."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 1, 4, 4, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    images[..., 4:10, 4:10] += 0.5
    return (images.clamp(0, 1) * 255).round() / 255


def test_the_same_images_give_identical_outputs() -> None:
    images = chests()
    assert torch.equal(
        standardise(images, DEFAULT_STANDARDISATION), standardise(images, DEFAULT_STANDARDISATION)
    )


def test_each_image_is_standardised_on_its_own() -> None:
    images = chests()
    alone = standardise(images[:1], DEFAULT_STANDARDISATION)
    in_a_batch = standardise(torch.cat([images[:1], images[1:] * 0.2]), DEFAULT_STANDARDISATION)
    assert torch.equal(alone[0], in_a_batch[0])


FULL_EQUALISATION = StandardisationConfig(clip_limit=EQUALISATION_LEVELS)


def gap(first: torch.Tensor, second: torch.Tensor, config: StandardisationConfig) -> torch.Tensor:
    return (standardise(first, config) - standardise(second, config)).abs()


def test_another_exposure_of_the_same_chest_comes_out_alike() -> None:
    images = chests()
    exposed = images.pow(1.8) * 0.6 + 0.15  # darker mid-tones, less contrast, brighter
    raw_gap = (images - exposed).abs().mean()
    assert raw_gap > 0.1
    assert gap(images, exposed, FULL_EQUALISATION).mean() < 0.01
    assert gap(images, exposed, DEFAULT_STANDARDISATION).mean() < raw_gap / 4


def test_the_clip_limit_keeps_a_flat_border_from_taking_over() -> None:
    images = chests(1, 40)
    bordered = images.clone()
    bordered[..., :, 28:] = images.median()  # a collimation border over 30 % of the image
    chest = (..., slice(None), slice(0, 28))
    clipped = gap(images, bordered, DEFAULT_STANDARDISATION)[chest].mean()
    assert clipped < gap(images, bordered, FULL_EQUALISATION)[chest].mean() / 2


@pytest.mark.parametrize(
    "rows",
    [
        torch.rand(3, 4096, generator=torch.Generator().manual_seed(2)) ** 3,  # skewed
        torch.randint(0, 256, (3, 1000), generator=torch.Generator().manual_seed(3)) / 255,
        torch.tensor([[0.2, 0.2, 0.2, 0.9], [0.0, 1.0, 0.5, 0.25]]),  # tiny rows, ties
    ],
    ids=["continuous", "8-bit", "tiny"],
)
def test_percentiles_match_torch_quantile_to_a_bin_of_the_range(rows) -> None:
    fractions = [0.0, 0.01, 0.5, 0.99, 1.0]
    exact = torch.quantile(rows, torch.tensor(fractions), dim=1).T
    bin_width = (rows.amax(1, keepdim=True) - rows.amin(1, keepdim=True)) / PERCENTILE_BINS
    assert (percentiles(rows, fractions) - exact).abs().le(bin_width + 1e-7).all()


def test_a_flat_image_has_its_value_at_every_percentile() -> None:
    flat = torch.full((1, 100), 0.4)
    assert torch.allclose(percentiles(flat, [0.01, 0.99]), torch.tensor([[0.4, 0.4]]))


def test_windowing_maps_the_percentiles_to_the_full_range() -> None:
    images = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.3
    images[..., 0, :4] = 1.0  # burnt-in text on 0.25 % of the pixels
    windowed = standardise(images, StandardisationConfig(equalise=False))
    body = windowed[..., 1:, :]
    assert windowed[..., 0, :4].eq(1).all()
    assert body.min() == 0 and body.quantile(0.98) > 0.95  # the text did not squash the chest


def test_black_padding_stays_black_and_the_brightest_level_becomes_white() -> None:
    images = chests(1)
    images[..., :, :8] = 0.0
    out = standardise(images, DEFAULT_STANDARDISATION)
    assert out[..., :, :8].eq(0).all()
    assert out.max() == 1


def test_a_flat_image_becomes_zero_not_nan() -> None:
    out = standardise(torch.full((2, 1, 8, 8), 0.4), DEFAULT_STANDARDISATION)
    assert torch.equal(out, torch.zeros_like(out))


def test_an_input_that_requires_a_gradient_still_gets_one() -> None:
    images = chests().requires_grad_(True)
    out = standardise(images, DEFAULT_STANDARDISATION)
    out.sum().backward()
    assert torch.allclose(out.detach(), standardise(images.detach(), DEFAULT_STANDARDISATION))
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_percentiles_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="must be below"):
        StandardisationConfig(low_percentile=60, high_percentile=40)


def test_without_a_config_images_pass_unchanged() -> None:
    images = chests()
    assert torch.equal(IntensityStandardisation(None)(images), images)


def test_new_models_standardise_before_normalising() -> None:
    model = build_model("hxr50", 2).eval()
    images = chests(2, 64)
    assert model.standardize.config == DEFAULT_STANDARDISATION
    assert not any("standardize" in name for name in model.state_dict())
    with torch.no_grad():
        expected = model.encoder(model.normalize(standardise(images, DEFAULT_STANDARDISATION)))
        assert torch.equal(model.features(images), expected)
