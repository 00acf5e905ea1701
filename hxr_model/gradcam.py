"""Grad-CAM heat maps, overlays and localisation scores for any `build_model` model.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the model's last spatial feature map by
the mean gradient of the class score with respect to it. The gradient is taken with
`torch.autograd.grad` on that feature map only, so parameters never receive `.grad` and a training
loop running beside it is not disturbed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from hxr_model.models import RadiographClassifier

Box = tuple[int, int, int, int]
COLORMAP = "jet"


def _normalise_each(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale every [H, W] map to [0, 1]; a flat map becomes 1 where it is positive."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    flat_maps = (maps > 0).to(maps.dtype)
    scaled = (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny)
    return torch.where(span > 0, scaled.clamp(0.0, 1.0), flat_maps)


def gradcam(
    model: RadiographClassifier,
    images: torch.Tensor,
    target_classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Heat maps [B, H, W] in [0, 1] at input resolution for `images` [B, 1, H, W].

    `target_classes` picks the explained class per image (default: the predicted class). The model
    runs in eval mode and gets its previous mode back.
    """
    layer = model.gradcam_module()
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # An input that requires grad keeps the graph alive even when every parameter is frozen.
            inputs = images.detach().clone().requires_grad_(True)
            logits = model(inputs)
            if target_classes is None:
                targets = logits.argmax(dim=1)
            else:
                targets = torch.as_tensor(list(target_classes), device=logits.device)
                if targets.shape != (logits.shape[0],):
                    raise ValueError(f"need one target class per image, got {len(targets)}")
            activations = captured[-1]
            scores = logits.gather(1, targets.view(-1, 1)).sum()
            (gradients,) = torch.autograd.grad(scores, activations)
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return _normalise_each(cam[:, 0]).cpu().numpy()


def _plane(array: np.ndarray, what: str) -> np.ndarray:
    """The [H, W] plane of a [H, W] or [1, H, W] array."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a single-channel {what}, got shape {array.shape}")
    return array


def _as_unit_gray(image: np.ndarray) -> np.ndarray:
    """A [H, W] float image in [0, 1] from uint8 or float input, with or without a channel axis."""
    image = _plane(image, "image")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def overlay_image(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a colour-mapped heat map over a grayscale radiograph (heat map resized to fit)."""
    gray = _as_unit_gray(image)
    heat = np.clip(_plane(heatmap, "heat map").astype(np.float32), 0.0, 1.0)
    if heat.shape != gray.shape:
        resized = Image.fromarray(heat).resize(gray.shape[::-1], Image.Resampling.BILINEAR)
        heat = np.clip(np.asarray(resized), 0.0, 1.0)
    colours = matplotlib.colormaps[COLORMAP](heat)[..., :3]
    blended = (1.0 - alpha) * gray[..., None] + alpha * colours
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def save_overlay_png(path: Path, image: np.ndarray, heatmap: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_image(image, heatmap).save(path, format="PNG")


def _region(mask: np.ndarray | Box, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean mask from a mask array or a half-open pixel box (x0, y0, x1, y1)."""
    if isinstance(mask, tuple | list):
        x0, y0, x1, y1 = (int(v) for v in mask)
        region = np.zeros(shape, dtype=bool)
        region[max(y0, 0) : y1, max(x0, 0) : x1] = True
        return region
    region = _plane(mask, "mask").astype(bool)
    if region.shape != shape:
        raise ValueError(f"mask shape {region.shape} differs from heat map shape {shape}")
    return region


def localisation_score(heatmap: np.ndarray, mask: np.ndarray | Box) -> dict[str, bool | float]:
    """How well a heat map points at a known lesion (mask array or box (x0, y0, x1, y1)).

    `pointing_game_hit`: the heat map's maximum lies inside the lesion; `energy_inside`: share of
    the total heat inside it (0 for an all-zero map).
    """
    heat = _plane(heatmap, "heat map").astype(np.float64)
    region = _region(mask, heat.shape)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    total = heat.sum()
    return {
        "pointing_game_hit": bool(region[peak]),
        "energy_inside": float(heat[region].sum() / total) if total > 0 else 0.0,
    }
