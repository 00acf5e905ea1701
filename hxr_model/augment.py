"""Batch augmentations for grayscale chest radiographs (tensors in [0, 1], shape B x 1 x H x W).

Chosen for radiographs: crops, small rotations and shifts (patient positioning), brightness,
contrast and gamma (exposure and detector response), blur, sharpening and noise (scanner quality
and post-processing), collimation borders, and burnt-in text and side markers: the ways another
hospital's images differ from the ones a model was trained on. There are no colour operations
(one channel) and no horizontal flips: the heart's side is anatomy, and a flipped film is an
error a model should not learn to ignore. Everything runs on whole batches so augmentation never
starves training on a 2-core laptop. The operations are public with explicit per-image
parameters, so a robustness study can apply one shift at a fixed strength.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Burnt-in text is drawn as characters of a 5 x 7 dot matrix, as scanners write them.
GLYPH_ROWS, GLYPH_COLUMNS = 7, 5
MAX_CHARACTERS = 6


@dataclass(frozen=True)
class AugmentationSpec:
    """Ranges sampled independently per image; a probability of 0 leaves that step out."""

    crop_scale: tuple[float, float] = (0.85, 1.0)  # fraction of the image area kept (>1: zoom out)
    # Width against height stretched by a factor between 1 / (1 + a) and 1 + a (log-uniform), the
    # area kept: how a resize that ignores the aspect ratio, or another detector, frames a chest.
    aspect_ratio: float = 0.0
    rotation_degrees: float = 5.0
    translate_fraction: float = 0.04
    brightness: float = 0.08  # additive shift, +-
    contrast: float = 0.15  # multiplicative around the image mean, 1 +-
    gamma: float = 0.15  # exponent, 1 +-
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # pixels, for blurring and sharpening
    sharpen_probability: float = 0.0  # unsharp masking, as detector post-processing does
    sharpen_amount: tuple[float, float] = (0.5, 1.5)
    noise_std: float = 0.0  # maximum standard deviation of additive Gaussian noise
    collimation_probability: float = 0.0
    collimation_fraction: float = 0.12  # widest border on each side, fraction of the side
    text_probability: float = 0.0  # burnt-in text or a side marker in a corner
    text_height: tuple[float, float] = (0.04, 0.09)  # fraction of the side


LIGHT = AugmentationSpec()
# Fine-tuning against other hospitals' images: LIGHT's positioning and exposure changes (the
# model's standardisation undoes larger exposure changes, and stronger ones only saturate detail
# away), plus scanner blur and sharpening, collimation borders and burnt-in text, and the framing
# another pipeline gives a chest: a wider field of view and a stretched aspect ratio.
SCANNER_SHIFT = dataclasses.replace(
    LIGHT,
    crop_scale=(0.85, 1.2),
    aspect_ratio=0.2,
    blur_probability=0.3,
    sharpen_probability=0.2,
    collimation_probability=0.2,
    text_probability=0.3,
)
SIMCLR = AugmentationSpec(
    crop_scale=(0.35, 1.0),
    rotation_degrees=10.0,
    translate_fraction=0.08,
    brightness=0.25,
    contrast=0.4,
    gamma=0.4,
    blur_probability=0.5,
    sharpen_probability=0.2,
    noise_std=0.05,
    collimation_probability=0.3,
    text_probability=0.5,
)
PRESETS: dict[str, AugmentationSpec] = {"light": LIGHT, "scanner-shift": SCANNER_SHIFT}


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


def _chosen(batch: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch, generator=generator) < probability


def _per_image(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1).to(images)


def resample(
    images: torch.Tensor,
    window: tuple[torch.Tensor, torch.Tensor],
    angle: torch.Tensor,
    shift: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Each image seen through a window of `window` (width, height) [B] times its sides (below
    1: zoomed in), rotated by `angle` [B] radians and moved by `shift` (x, y) [B] in half-sides:
    one interpolation for crop, stretch, rotation and shift, not four."""
    (width, height), cos, sin = window, torch.cos(angle), torch.sin(angle)
    shift_x, shift_y = shift
    theta = torch.stack(
        [
            torch.stack([cos * width, -sin * height, shift_x], 1),
            torch.stack([sin * width, cos * height, shift_y], 1),
        ],
        1,
    ).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def adjust_intensity(
    images: torch.Tensor, gamma: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor
) -> torch.Tensor:
    """Gamma, then contrast around each image's mean, then an additive shift (all [B])."""
    images = images.clamp(1e-6, 1).pow(_per_image(gamma, images))
    mean = images.mean(dim=(2, 3), keepdim=True)
    contrast, brightness = _per_image(contrast, images), _per_image(brightness, images)
    return ((images - mean) * contrast + mean + brightness).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred with its own Gaussian, `sigma` [B] in pixels (edges replicated)."""
    if not (sigma > 0).all():
        raise ValueError("blur sigma must be positive")
    batch = images.shape[0]
    radius = math.ceil(3 * float(sigma.max()))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma.float()[:, None] ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(images)
    # Separable Gaussian per image: images become channels of one grouped convolution.
    as_channels = images.transpose(0, 1)
    padded = F.pad(as_channels, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernels.view(batch, 1, 1, -1), groups=batch)
    blurred = F.conv2d(blurred, kernels.view(batch, 1, -1, 1), groups=batch)
    return blurred.transpose(0, 1)


def sharpen(images: torch.Tensor, sigma: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Unsharp masking: each image plus `amount` [B] times its detail above a `sigma` blur."""
    detail = images - gaussian_blur(images, sigma)
    return (images + _per_image(amount, images) * detail).clamp(0, 1)


def add_noise(images: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation `std` [B] per image."""
    noise = torch.randn(images.shape, generator=generator) * std.view(-1, 1, 1, 1)
    return (images + noise.to(images)).clamp(0, 1)


def collimate(images: torch.Tensor, borders: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Flat borders where the collimator blocked the beam: `borders` [B, 4] are the left, right,
    top and bottom widths as fractions of the side, `fill` [B] their grey level."""
    height, width = images.shape[-2:]
    xs = (torch.arange(width, device=images.device) + 0.5) / width
    ys = (torch.arange(height, device=images.device) + 0.5) / height
    left, right, top, bottom = borders.to(images.device).unbind(1)
    outside_x = (xs < left[:, None]) | (xs > 1 - right[:, None])
    outside_y = (ys < top[:, None]) | (ys > 1 - bottom[:, None])
    outside = outside_x[:, None, None, :] | outside_y[:, None, :, None]
    return torch.where(outside, _per_image(fill, images), images)


def burn_in_text(
    images: torch.Tensor, height: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """1 to MAX_CHARACTERS random dot-matrix characters, `height` [B] a fraction of the side,
    burnt bright into a random corner of each image: the labels, dates and side markers
    scanners write into the pixels."""
    batch = images.shape[0]
    cell = GLYPH_COLUMNS + 1  # a blank column after each character
    columns = MAX_CHARACTERS * cell
    bits = torch.rand(batch, GLYPH_ROWS, columns, generator=generator) < 0.5
    characters = torch.randint(1, MAX_CHARACTERS + 1, (batch,), generator=generator)
    column = torch.arange(columns)
    bits &= ((column % cell < GLYPH_COLUMNS) & (column < characters[:, None] * cell))[:, None]
    used = (characters * cell - 1).float() / columns  # share of the bitmap the text fills
    half_height = height.float()
    half_width = half_height * (characters * cell - 1) / GLYPH_ROWS * images.shape[-2]
    half_width = half_width / images.shape[-1]
    corner_x, corner_y = (torch.randint(0, 2, (2, batch), generator=generator) * 2 - 1).float()
    margin = _uniform(batch, 0.0, 0.08, generator)
    centre_x = corner_x * (1 - half_width - margin)
    centre_y = corner_y * (1 - half_height - margin)
    # Image coordinates -> bitmap coordinates, the text box onto the used columns.
    zero = torch.zeros(batch)
    theta = torch.stack(
        [
            torch.stack([used / half_width, zero, used - 1 - used * centre_x / half_width], 1),
            torch.stack([zero, 1 / half_height, -centre_y / half_height], 1),
        ],
        1,
    ).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    glyphs = bits[:, None].to(images)
    mask = F.grid_sample(glyphs, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    level = _per_image(_uniform(batch, 0.7, 1.0, generator), images)
    return torch.where(mask > 0.5, level, images)


def _where(chosen: torch.Tensor, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.where(chosen.view(-1, 1, 1, 1).to(images.device), changed, images)


def augment_batch(
    images: torch.Tensor, spec: AugmentationSpec, generator: torch.Generator
) -> torch.Tensor:
    """One random view of every image. Random numbers come from `generator` (CPU) for
    reproducibility; the work runs on the images' device."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected a B x 1 x H x W batch, got shape {tuple(images.shape)}")
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return _uniform(batch, low, high, generator)

    side_scale = uniform(*spec.crop_scale).sqrt()
    angle = uniform(-spec.rotation_degrees, spec.rotation_degrees) * math.pi / 180
    stretch = torch.ones(batch)
    if spec.aspect_ratio > 0:
        stretch = (uniform(-1, 1) * math.log1p(spec.aspect_ratio) / 2).exp()
    window = (side_scale / stretch, side_scale * stretch)
    shift_x, shift_y = (
        (torch.rand(batch, generator=generator) * 2 - 1)
        * ((1 - side) + spec.translate_fraction).abs()
        for side in window
    )
    images = resample(images, window, angle, (shift_x, shift_y))
    if spec.collimation_probability > 0:
        chosen = _chosen(batch, spec.collimation_probability, generator)
        borders = torch.rand(batch, 4, generator=generator) * spec.collimation_fraction
        images = _where(chosen, collimate(images, borders, uniform(0, 1)), images)
    images = adjust_intensity(
        images,
        gamma=uniform(1 - spec.gamma, 1 + spec.gamma),
        contrast=uniform(1 - spec.contrast, 1 + spec.contrast),
        brightness=uniform(-spec.brightness, spec.brightness),
    )
    if spec.blur_probability > 0:
        chosen = _chosen(batch, spec.blur_probability, generator)
        if chosen.any():
            images = _where(chosen, gaussian_blur(images, uniform(*spec.blur_sigma)), images)
    if spec.sharpen_probability > 0:
        chosen = _chosen(batch, spec.sharpen_probability, generator)
        sharpened = sharpen(images, uniform(*spec.blur_sigma), uniform(*spec.sharpen_amount))
        images = _where(chosen, sharpened, images)
    if spec.noise_std > 0:
        images = add_noise(images, uniform(0, spec.noise_std), generator)
    if spec.text_probability > 0:
        chosen = _chosen(batch, spec.text_probability, generator)
        images = _where(chosen, burn_in_text(images, uniform(*spec.text_height), generator), images)
    return images
