"""torchvision baselines adapted to 1-channel radiographs, nothing else changed.

Only the first convolution is replaced (1 input channel instead of 3); the classifier becomes the
shared dropout + linear head so baselines pre-warm, distil and federate like HybridNet-XR.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tv


def _one_channel_conv(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


class PooledFeatures(nn.Module):
    """A torchvision feature extractor followed by global average pooling."""

    def __init__(self, features: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_channels = out_channels

    def forward(self, x):
        return self.pool(self.features(x))


def mobilenet_v2_encoder() -> PooledFeatures:
    net = tv.mobilenet_v2(weights=None)
    net.features[0][0] = _one_channel_conv(net.features[0][0])
    return PooledFeatures(net.features, net.last_channel)


def mobilenet_v3_small_encoder() -> PooledFeatures:
    net = tv.mobilenet_v3_small(weights=None)
    net.features[0][0] = _one_channel_conv(net.features[0][0])
    return PooledFeatures(net.features, net.classifier[0].in_features)


def mobilenet_v3_large_encoder() -> PooledFeatures:
    net = tv.mobilenet_v3_large(weights=None)
    net.features[0][0] = _one_channel_conv(net.features[0][0])
    return PooledFeatures(net.features, net.classifier[0].in_features)


def efficientnet_b0_encoder() -> PooledFeatures:
    net = tv.efficientnet_b0(weights=None)
    net.features[0][0] = _one_channel_conv(net.features[0][0])
    return PooledFeatures(net.features, net.classifier[1].in_features)


def resnet18_encoder() -> PooledFeatures:
    net = tv.resnet18(weights=None)
    net.conv1 = _one_channel_conv(net.conv1)
    features = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return PooledFeatures(features, net.fc.in_features)
