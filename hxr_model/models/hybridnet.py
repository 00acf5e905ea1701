"""HybridNet-XR: a small CNN for grayscale chest radiographs.

Principles from the paper: aggressive early downsampling (the stem reaches 1/4 resolution before
any residual stage, where most of the memory of a CNN would otherwise go), stages of
depthwise-separable residual blocks, global pooling and a dropout + linear head. Variants differ
only by a width multiplier applied to the stage table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation


@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table: `blocks` residual blocks, the first with `stride`."""

    channels: int
    blocks: int
    stride: int
    expansion: int


STEM_CHANNELS = (16, 32)
# Resolution after each stage at 224 px input: 56, 28, 14, 7.
STAGE_TABLE: tuple[StageSpec, ...] = (
    StageSpec(channels=32, blocks=1, stride=1, expansion=2),
    StageSpec(channels=64, blocks=2, stride=2, expansion=2),
    StageSpec(channels=128, blocks=3, stride=2, expansion=2),
    StageSpec(channels=256, blocks=2, stride=2, expansion=2),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor` without losing more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SeparableResidualBlock(nn.Module):
    """Depthwise 3x3 (carries the stride) -> pointwise expand -> pointwise project, plus shortcut.

    The shortcut is the identity when shape is kept, otherwise a strided 1x1 projection.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.depthwise = Conv2dNormActivation(
            in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels
        )
        self.expand = Conv2dNormActivation(in_channels, hidden, kernel_size=1)
        self.project = Conv2dNormActivation(
            hidden, out_channels, kernel_size=1, activation_layer=None
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = Conv2dNormActivation(
                in_channels, out_channels, kernel_size=1, stride=stride, activation_layer=None
            )
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.project(self.expand(self.depthwise(x)))
        return self.activation(residual + self.shortcut(x))


class HybridNetXREncoder(nn.Module):
    """Stem (1/4 resolution) -> residual stages -> global average pooling -> feature vector."""

    def __init__(self, width: float, stage_table: tuple[StageSpec, ...] = STAGE_TABLE) -> None:
        super().__init__()
        stem_mid, stem_out = (make_divisible(c * width) for c in STEM_CHANNELS)
        self.stem = nn.Sequential(
            Conv2dNormActivation(1, stem_mid, kernel_size=3, stride=2),
            Conv2dNormActivation(stem_mid, stem_mid, kernel_size=3, stride=2, groups=stem_mid),
            Conv2dNormActivation(stem_mid, stem_out, kernel_size=1),
        )
        stages: list[nn.Module] = []
        channels = stem_out
        for spec in stage_table:
            out_channels = make_divisible(spec.channels * width)
            blocks = [
                SeparableResidualBlock(
                    channels if i == 0 else out_channels,
                    out_channels,
                    spec.stride if i == 0 else 1,
                    spec.expansion,
                )
                for i in range(spec.blocks)
            ]
            stages.append(nn.Sequential(*blocks))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))
