"""The shape every model in the project shares: standardise -> normalise -> encoder -> head.

Pre-warming trains the encoder alone, federation may aggregate the encoder alone, Grad-CAM
needs one named layer: a common wrapper gives all of them one place to look.
"""

from __future__ import annotations

import torch
from torch import nn

from hxr_model.standardisation import (
    DEFAULT_STANDARDISATION,
    IntensityStandardisation,
    StandardisationConfig,
)

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25


class InputNormalization(nn.Module):
    """Maps [0, 1] radiographs to the model's input range.

    The constants are settings, not weights: they live in the checkpoint's model config and are
    left out of the state dict, so federated averaging or privacy noise can never change them.
    """

    def __init__(self, mean: float = DEFAULT_MEAN, std: float = DEFAULT_STD) -> None:
        super().__init__()
        if std <= 0:
            raise ValueError(f"normalisation std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RadiographClassifier(nn.Module):
    """`head(encoder(normalize(standardize(x))))` for 1 x H x W inputs with values in [0, 1].

    `standardisation` (per-image windowing and equalisation; None for none) is on by default,
    so every new model sees radiographs from any scanner in one intensity range. `encoder` ends
    in global pooling and returns a `feature_dim` vector; `gradcam_layer` names the last spatial
    feature map (a dotted path into this module).
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        num_classes: int,
        gradcam_layer: str,
        dropout: float = 0.2,
        mean: float = DEFAULT_MEAN,
        std: float = DEFAULT_STD,
        standardisation: StandardisationConfig | None = DEFAULT_STANDARDISATION,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.standardize = IntensityStandardisation(standardisation)
        self.normalize = InputNormalization(mean, std)
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.gradcam_layer = gradcam_layer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features (what SimCLR and distillation work on)."""
        return self.encoder(self.normalize(self.standardize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def gradcam_module(self) -> nn.Module:
        """The stack of stages Grad-CAM chooses from: its children, shallow to deep, are the
        candidate maps (`hxr_model.gradcam.choose_stage` states which one is read)."""
        return self.get_submodule(self.gradcam_layer)
