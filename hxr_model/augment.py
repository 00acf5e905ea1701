"""Batch augmentations for grayscale chest radiographs (tensors in [0, 1], shape B x 1 x H x W).

Chosen for radiographs: crops, small rotations and shifts (patient positioning), brightness,
contrast and gamma (exposure and detector response), blur and noise (scanner quality). There are
no colour operations (one channel) and no horizontal flips: the heart's side is anatomy, and a
flipped film is an error a model should not learn to ignore. Everything runs on whole batches so
augmentation never starves training on a 2-core laptop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentationSpec:
    """Ranges sampled independently per image."""

    crop_scale: tuple[float, float] = (0.85, 1.0)  # fraction of the image area kept
    rotation_degrees: float = 5.0
    translate_fraction: float = 0.04
    brightness: float = 0.08  # additive shift, +-
    contrast: float = 0.15  # multiplicative around the image mean, 1 +-
    gamma: float = 0.15  # exponent, 1 +-
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    noise_std: float = 0.0  # maximum standard deviation of additive Gaussian noise


LIGHT = AugmentationSpec()
SIMCLR = AugmentationSpec(
    crop_scale=(0.35, 1.0),
    rotation_degrees=10.0,
    translate_fraction=0.08,
    brightness=0.25,
    contrast=0.4,
    gamma=0.4,
    blur_probability=0.5,
    noise_std=0.05,
)


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


def _affine(images: torch.Tensor, spec: AugmentationSpec, generator: torch.Generator):
    """Random resized crop, rotation and shift as one resampling (one interpolation, not three)."""
    batch = images.shape[0]
    scale = _uniform(batch, *spec.crop_scale, generator).sqrt()  # side fraction
    angle = _uniform(batch, -spec.rotation_degrees, spec.rotation_degrees, generator)
    angle = angle * math.pi / 180
    max_shift = (1 - scale) + spec.translate_fraction
    shift_x = (torch.rand(batch, generator=generator) * 2 - 1) * max_shift
    shift_y = (torch.rand(batch, generator=generator) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    ).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _intensity(images: torch.Tensor, spec: AugmentationSpec, generator: torch.Generator):
    batch = images.shape[0]
    shape = (batch, 1, 1, 1)

    def per_image(low: float, high: float) -> torch.Tensor:
        return _uniform(batch, low, high, generator).view(shape).to(images)

    gamma = per_image(1 - spec.gamma, 1 + spec.gamma)
    images = images.clamp(1e-6, 1).pow(gamma)
    mean = images.mean(dim=(2, 3), keepdim=True)
    contrast = per_image(1 - spec.contrast, 1 + spec.contrast)
    brightness = per_image(-spec.brightness, spec.brightness)
    return ((images - mean) * contrast + mean + brightness).clamp(0, 1)


def _blur(images: torch.Tensor, spec: AugmentationSpec, generator: torch.Generator):
    batch = images.shape[0]
    apply = torch.rand(batch, generator=generator) < spec.blur_probability
    if not apply.any():
        return images
    sigma = _uniform(batch, *spec.blur_sigma, generator)
    radius = math.ceil(3 * spec.blur_sigma[1])
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(images)
    # Separable Gaussian per image: images become channels of one grouped convolution.
    as_channels = images.transpose(0, 1)
    padded = F.pad(as_channels, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernels.view(batch, 1, 1, -1), groups=batch)
    blurred = F.conv2d(blurred, kernels.view(batch, 1, -1, 1), groups=batch)
    blurred = blurred.transpose(0, 1)
    return torch.where(apply.view(batch, 1, 1, 1).to(images.device), blurred, images)


def _noise(images: torch.Tensor, spec: AugmentationSpec, generator: torch.Generator):
    batch = images.shape[0]
    std = _uniform(batch, 0, spec.noise_std, generator).view(batch, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator) * std
    return (images + noise.to(images)).clamp(0, 1)


def augment_batch(
    images: torch.Tensor, spec: AugmentationSpec, generator: torch.Generator
) -> torch.Tensor:
    """One random view of every image. Random numbers come from `generator` (CPU) for
    reproducibility; the work runs on the images' device."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected a B x 1 x H x W batch, got shape {tuple(images.shape)}")
    images = _affine(images, spec, generator)
    images = _intensity(images, spec, generator)
    if spec.blur_probability > 0:
        images = _blur(images, spec, generator)
    if spec.noise_std > 0:
        images = _noise(images, spec, generator)
    return images
