"""HybridNet-XR: a small CNN for grayscale chest radiographs.

Principles from the paper: aggressive early downsampling (the stem reaches 1/4 resolution before
any residual stage, where most of the memory of a CNN would otherwise go), stages of
depthwise-separable residual blocks, global pooling and a dropout + linear head. Variants differ
only by a width multiplier applied to the stage table.

The layout is tuned for CPU training (docs/benchmarks.md has the measurements): the stem cuts
4 x 4 patches, no residual block works above 1/8 resolution (the first stage downsamples in its
first block), and the capacity sits at 1/32 where it is cheap in time and activation memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import Conv2dNormActivation


@dataclass(frozen=True)
class StageSpec:
    """One row of the stage table: `blocks` residual blocks, the first with `stride`."""

    channels: int
    blocks: int
    stride: int
    expansion: int


STEM_CHANNELS = 32
STEM_PATCH = 4
# The stem's ReLU can pass a whole 4 x 4 patch on only with 2 channels per pixel
# (x = relu(x) - relu(-x)); thinner stems lost accuracy at 28 px (docs/benchmarks.md).
MIN_STEM_CHANNELS = 2 * STEM_PATCH**2
# Resolution after the stem and each stage at 224 px input: 56 | 28, 14, 7, 7 (at 64 px:
# 16 | 8, 4, 2, 2). The stages are Grad-CAM's candidates; `hxr_model.gradcam` reads the
# deepest with at least 7 x 7 cells.
STAGE_TABLE: tuple[StageSpec, ...] = (
    StageSpec(channels=32, blocks=1, stride=2, expansion=2),
    StageSpec(channels=64, blocks=2, stride=2, expansion=2),
    StageSpec(channels=128, blocks=3, stride=2, expansion=2),
    StageSpec(channels=256, blocks=2, stride=1, expansion=1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor` without losing more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class PatchConv(nn.Conv2d):
    """A convolution over non-overlapping patches (kernel = stride, no padding), computed as
    space-to-depth followed by a 1x1 convolution.

    Same weights and outputs as `nn.Conv2d`, but on CPU the backward pass of a strided kernel over
    one input channel is slow, while the 1x1 form is a plain matrix product (measured 1.8x faster
    for the HXR-150 stem at 224 px, batch 32). Trailing rows/columns that do not fill a patch are
    dropped, as `nn.Conv2d` does.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        patch = self.kernel_size[0]
        if (
            self.kernel_size != (patch, patch)
            or self.stride != self.kernel_size
            or self.padding != (0, 0)
            or self.dilation != (1, 1)
            or self.groups != 1
        ):
            raise ValueError("PatchConv needs square kernel == stride, no padding/dilation/groups")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.kernel_size[0]
        height = x.shape[-2] // patch * patch
        width = x.shape[-1] // patch * patch
        patches = F.pixel_unshuffle(x[..., :height, :width], patch)
        return F.conv2d(patches, self.weight.reshape(self.out_channels, -1, 1, 1), self.bias)


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
        channels = max(make_divisible(STEM_CHANNELS * width), MIN_STEM_CHANNELS)
        # Conv -> norm -> activation, laid out like the Conv2dNormActivation layers elsewhere.
        self.stem = nn.Sequential(
            nn.Sequential(
                PatchConv(1, channels, STEM_PATCH, stride=STEM_PATCH, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
        )
        stages: list[nn.Module] = []
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
