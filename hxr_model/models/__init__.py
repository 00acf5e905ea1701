"""Model registry: one `build_model(name, num_classes)` for HybridNet-XR variants and baselines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from hxr_model.errors import UnknownModelError
from hxr_model.models.baselines import (
    efficientnet_b0_encoder,
    mobilenet_v2_encoder,
    mobilenet_v3_large_encoder,
    mobilenet_v3_small_encoder,
    resnet18_encoder,
)
from hxr_model.models.classifier import RadiographClassifier
from hxr_model.models.hybridnet import STAGE_TABLE, HybridNetXREncoder, StageSpec

__all__ = [
    "MODELS",
    "STAGE_TABLE",
    "ModelEntry",
    "RadiographClassifier",
    "StageSpec",
    "build_model",
    "check_model_name",
    "model_names",
]


@dataclass(frozen=True)
class ModelEntry:
    """How to build one registered model's encoder and where Grad-CAM looks in it."""

    make_encoder: Callable[[], nn.Module]
    gradcam_layer: str
    description: str


def _hybridnet(width: float) -> Callable[[], nn.Module]:
    return lambda: HybridNetXREncoder(width)


MODELS: dict[str, ModelEntry] = {
    "hxr50": ModelEntry(_hybridnet(0.5), "encoder.stages", "HybridNet-XR, 0.5x width"),
    "hxr100": ModelEntry(_hybridnet(1.0), "encoder.stages", "HybridNet-XR, 1.0x width"),
    "hxr150": ModelEntry(_hybridnet(1.5), "encoder.stages", "HybridNet-XR, 1.5x width"),
    "mobilenet_v2": ModelEntry(
        mobilenet_v2_encoder, "encoder.features", "torchvision MobileNetV2, 1-channel input"
    ),
    "mobilenet_v3_small": ModelEntry(
        mobilenet_v3_small_encoder,
        "encoder.features",
        "torchvision MobileNetV3-Small, 1-channel input",
    ),
    "mobilenet_v3_large": ModelEntry(
        mobilenet_v3_large_encoder,
        "encoder.features",
        "torchvision MobileNetV3-Large, 1-channel input",
    ),
    "resnet18": ModelEntry(
        resnet18_encoder, "encoder.features", "torchvision ResNet-18, 1-channel"
    ),
    "efficientnet_b0": ModelEntry(
        efficientnet_b0_encoder, "encoder.features", "torchvision EfficientNet-B0, 1-channel"
    ),
}


def model_names() -> list[str]:
    return list(MODELS)


def check_model_name(name: str) -> str:
    """`name` when the registry holds it; every place that accepts a model name asks here, so
    they all refuse the same names with the same message."""
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return name


def build_model(
    name: str,
    num_classes: int,
    dropout: float = 0.2,
    mean: float = 0.5,
    std: float = 0.25,
) -> RadiographClassifier:
    """Build a registered model for 1 x H x W radiographs with values in [0, 1]."""
    entry = MODELS[check_model_name(name)]
    encoder = entry.make_encoder()
    return RadiographClassifier(
        encoder,
        feature_dim=encoder.out_channels,
        num_classes=num_classes,
        gradcam_layer=entry.gradcam_layer,
        dropout=dropout,
        mean=mean,
        std=std,
    )
