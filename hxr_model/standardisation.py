"""Per-image intensity standardisation: the same radiograph looks the same from any hospital.

Exposure, detector response and post-processing differ between scanners; to the model they are
mostly monotonic remappings of grey levels. Each image is windowed to its own percentiles (which
also clips small burnt-in text and markers) and then histogram-equalised, which undoes such a
remapping (fully without a clip limit, largely with one): two exposures of one chest come out
alike. It runs inside the model's input path, so training, evaluation, prediction, federation
clients and Grad-CAM all see it. It is configuration stored in the checkpoint, not weights, and
is deterministic: no randomness, no batch statistics.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class StandardisationConfig(BaseModel):
    """Percentiles (0-100) each image is windowed to, and whether it is then equalised.

    `clip_limit` caps each grey level's share of the histogram at that many times the mean
    before equalising (as CLAHE does), spreading the excess evenly: a collimation border, black
    padding or flat background cannot take over the mapping, and noise in flat regions is not
    stretched. Lower values stay closer to the windowed image, higher ones equalise harder
    (EQUALISATION_LEVELS or more: plain histogram equalisation).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    low_percentile: float = Field(1.0, ge=0.0, lt=100.0)
    high_percentile: float = Field(99.0, gt=0.0, le=100.0)
    equalise: bool = True
    clip_limit: float = Field(3.0, ge=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> StandardisationConfig:
        if self.low_percentile >= self.high_percentile:
            raise ValueError(
                f"low_percentile {self.low_percentile} must be below high_percentile "
                f"{self.high_percentile}"
            )
        return self


DEFAULT_STANDARDISATION = StandardisationConfig()
# Grey levels equalisation counts in: those of the 8-bit images every dataset holds.
EQUALISATION_LEVELS = 256
# Bins of the histogram the window's percentiles are read from: 16 per grey level.
PERCENTILE_BINS = 4096


def percentiles(flat: torch.Tensor, fractions: list[float]) -> torch.Tensor:
    """Each row's percentiles [B, len(fractions)] of `flat` [B, N], `fractions` in [0, 1], as
    `torch.quantile` defines them (linear between the two order statistics around the rank),
    each order statistic to within 1 / PERCENTILE_BINS of the row's range.

    The order statistics are read off a histogram of PERCENTILE_BINS equal bins between the
    row's extremes: one pass over the pixels instead of torch.quantile's sort, which cost most
    of the standardisation's time (0.7 against 0.2 ms per 224 px image on one CPU thread) and
    so a measurable share of a small model's batch-1 latency.
    """
    count = flat.shape[1]
    lowest = flat.amin(dim=1, keepdim=True)
    width = ((flat.amax(dim=1, keepdim=True) - lowest) / PERCENTILE_BINS).clamp_min_(
        torch.finfo(flat.dtype).tiny
    )
    # Truncation is the floor here: every offset from the row's lowest value is at least 0.
    bins = ((flat - lowest) / width).long().clamp_(0, PERCENTILE_BINS - 1)
    in_bin = torch.zeros(flat.shape[0], PERCENTILE_BINS, dtype=flat.dtype, device=flat.device)
    in_bin.scatter_add_(1, bins, torch.ones_like(flat))
    at_or_below = in_bin.cumsum(dim=1)

    # The two order statistics around each percentile's position, all read in one go: a rank's
    # value is its bin and its place among the bin's values. The ranks depend on the image size
    # alone, so Python works them out (in float64, as torch.quantile does): each tensor
    # operation on a tiny tensor costs as much time as one on the whole image.
    positions = [fraction * (count - 1) for fraction in fractions]
    lower = [math.floor(position) for position in positions]
    upper = [min(rank + 1, count - 1) for rank in lower]
    ranks = torch.tensor(lower + upper, dtype=flat.dtype, device=flat.device)
    ranks = ranks.expand(flat.shape[0], -1)
    # The first bin holding more than `rank` values at or below it (a comparison and a sum,
    # which every runtime has: ONNX has no searchsorted).
    passed = at_or_below.unsqueeze(1) <= ranks.unsqueeze(2)
    where = passed.sum(dim=2).clamp_(max=PERCENTILE_BINS - 1)
    here = in_bin.gather(1, where)
    below = at_or_below.gather(1, where) - here
    within = ((ranks - below + 0.5) / here.clamp_min(1)).clamp_(0.0, 1.0)
    statistics = lowest + (where + within) * width
    below_rank, above_rank = statistics.split(len(fractions), dim=1)
    share = torch.tensor(
        [position - rank for position, rank in zip(positions, lower, strict=True)],
        dtype=flat.dtype,
        device=flat.device,
    )
    return below_rank + share * (above_rank - below_rank)


def window(flat: torch.Tensor, low_percentile: float, high_percentile: float) -> torch.Tensor:
    """Rescale each row of `flat` [B, N] so its percentiles map to 0 and 1, clipped; a flat row
    becomes 0."""
    bounds = percentiles(flat, [low_percentile / 100, high_percentile / 100])
    low, high = bounds[:, :1], bounds[:, 1:]
    span = high - low
    scaled = (flat - low) / span.clamp_min(torch.finfo(flat.dtype).eps)
    # A mask per row, not a `where` per pixel: the clamped values are finite, so multiplying
    # by 1 or 0 keeps them or zeroes them exactly, in a fraction of the time.
    return scaled.clamp_(0.0, 1.0).mul_(span > 0)


def equalise(flat: torch.Tensor, clip_limit: float) -> torch.Tensor:
    """Contrast-limited histogram equalisation of each row of `flat` [B, N] in [0, 1] over
    EQUALISATION_LEVELS grey levels: a value becomes the clipped histogram's share at or below
    its level, rescaled so the row's lowest level maps to 0 and its highest to 1 (black padding
    stays black); a flat row becomes 0. Counting into levels is exact in float32, so the result
    never depends on the order a device adds in."""
    grey = (flat * (EQUALISATION_LEVELS - 1)).round_()
    levels = grey.long()
    counts = torch.zeros(flat.shape[0], EQUALISATION_LEVELS, device=flat.device)
    counts.scatter_add_(1, levels, torch.ones_like(flat))
    clipped = counts.clamp_max(clip_limit * flat.shape[1] / EQUALISATION_LEVELS)
    excess = (counts - clipped).sum(dim=1, keepdim=True) / EQUALISATION_LEVELS
    at_or_below = (clipped + excess).cumsum(1)
    # The extremes are taken on the float grey levels: the same values, in far less time than
    # on the integer ones.
    darkest = grey.amin(dim=1, keepdim=True).long()
    brightest = grey.amax(dim=1, keepdim=True).long()
    lowest = at_or_below.gather(1, darkest)
    span = at_or_below.gather(1, brightest) - lowest
    # The mapping is worked out once per grey level, then looked up once per pixel.
    mapping = torch.where(span > 0, (at_or_below - lowest) / span.clamp_min(1e-6), 0.0)
    return mapping.gather(1, levels)


def standardise(images: torch.Tensor, config: StandardisationConfig) -> torch.Tensor:
    """`images` [B, 1, H, W] in [0, 1], each standardised on its own (never across the batch).

    Equalisation has no useful gradient, so an input that requires one gets it passed straight
    through: Grad-CAM and saliency keep a graph back to the image even with frozen weights.
    """
    flat = images.detach().flatten(1).float()
    out = window(flat, config.low_percentile, config.high_percentile)
    if config.equalise:
        out = equalise(out, config.clip_limit)
    out = out.view(images.shape).to(images.dtype)
    return images + (out - images).detach() if images.requires_grad else out


class IntensityStandardisation(nn.Module):
    """`standardise` as the model's first step; with no config (checkpoints written before the
    step existed) it passes images through unchanged. Holds no tensors, so state dicts and
    federated updates are the same with or without it."""

    def __init__(self, config: StandardisationConfig | None = DEFAULT_STANDARDISATION) -> None:
        super().__init__()
        self.config = config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.config is None else standardise(images, self.config)

    def extra_repr(self) -> str:
        return "off" if self.config is None else repr(self.config)
