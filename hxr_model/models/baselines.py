"""torchvision baselines adapted to 1-channel radiographs, nothing else changed but one thing.

The first convolution is replaced (1 input channel instead of 3); the classifier becomes the
shared dropout + linear head so baselines pre-warm, distil and federate like HybridNet-XR.
MobileNetV3's BatchNorm layers get PyTorch's default momentum (0.1, as every other model here
has) instead of torchvision's 0.01, which is tuned for ImageNet's hundreds of thousands of
steps: over a clinic's few hundred, their running statistics lag the weights, and on cxr4 at
128 px MobileNetV3-small scored 0.29-0.33 on test with them against 0.76-0.78 once they were
re-estimated on the training images (docs/benchmarks.md).
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tv

PYTORCH_BATCHNORM_MOMENTUM = 0.1


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


def _default_batchnorm_momentum(net: nn.Module) -> nn.Module:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = PYTORCH_BATCHNORM_MOMENTUM
    return net


def mobilenet_v3_small_encoder() -> PooledFeatures:
    net = _default_batchnorm_momentum(tv.mobilenet_v3_small(weights=None))
    net.features[0][0] = _one_channel_conv(net.features[0][0])
    return PooledFeatures(net.features, net.classifier[0].in_features)


def mobilenet_v3_large_encoder() -> PooledFeatures:
    net = _default_batchnorm_momentum(tv.mobilenet_v3_large(weights=None))
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
