"""Grad-CAM samples a site may share: a few per class, small, and only what its policy allows.

`heatmap` sites send low-resolution heat maps (where the model looked, not what it saw);
`overlay` sites add the radiograph downscaled to the same size. Both are quantised to uint8 so a
sample is a few hundred bytes; nothing identifies the image it came from.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from client.site_data import FederationLabels
from hxr_model.gradcam import gradcam
from hxr_model.models import RadiographClassifier
from protocol.gradcam_samples import GradcamSamples


def pick_per_class(labels: np.ndarray, num_classes: int, per_class: int) -> list[int]:
    """The first `per_class` examples of each class, in class order (deterministic)."""
    return [
        int(index)
        for label in range(num_classes)
        for index in np.flatnonzero(labels == label)[:per_class]
    ]


def downscaled_uint8(maps: torch.Tensor, size: int) -> np.ndarray:
    small = F.interpolate(maps[:, None].float(), size=(size, size), mode="area")[:, 0]
    return (small.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def gradcam_samples(
    model: RadiographClassifier,
    dataset: FederationLabels,
    *,
    per_class: int,
    size: int,
    include_images: bool,
) -> GradcamSamples | None:
    """Heat maps (and, if asked, images) for up to `per_class` examples of every class."""
    chosen = pick_per_class(dataset.labels, len(dataset.class_names), per_class)
    if not chosen:
        return None
    device = next(model.parameters()).device
    images = torch.stack([dataset[index][0] for index in chosen]).to(device)
    with torch.inference_mode():
        predictions = model.eval()(images).argmax(dim=1).cpu().tolist()
    heatmaps = torch.from_numpy(gradcam(model, images))
    return GradcamSamples(
        heatmaps=downscaled_uint8(heatmaps, size),
        images=downscaled_uint8(images[:, 0].cpu(), size) if include_images else None,
        labels=[int(dataset.labels[index]) for index in chosen],
        predictions=[int(p) for p in predictions],
    )
