"""Grad-CAM heat maps, overlays and localisation scores for any `build_model` model.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a spatial feature map by the mean
gradient of the class score with respect to it. The gradient is taken with `torch.autograd.grad`
on that feature map only, so parameters never receive `.grad` and a training loop running beside
it is not disturbed.

Which feature map: one rule for every model and input size. The candidates are the model's stages
(the children of `model.gradcam_module()`, in depth order); Grad-CAM reads the deepest stage whose
map is at least `MIN_MAP_SIDE` (7) cells on its shorter side, and when no stage is that large, the
deepest of the largest maps. A radiologist can tell a lobe from a lung only on such a grid: at
224 px that is the last stage (7 x 7), at 64 px HybridNet-XR's first stage (8 x 8), at 28 px its
first stage (4 x 4), where the last stage would give 2 x 2 and 1 x 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from hxr_model.models import RadiographClassifier

Box = tuple[int, int, int, int]
COLORMAP = "jet"
MIN_MAP_SIDE = 7


class GradcamLayer(NamedTuple):
    """The stage Grad-CAM reads (a dotted path into the model) and its map size in cells."""

    name: str
    cells: tuple[int, int]


def gradcam_stages(model: RadiographClassifier) -> list[tuple[str, nn.Module]]:
    """The candidate stages, shallow to deep, with their dotted paths."""
    container = model.gradcam_module()
    return [(f"{model.gradcam_layer}.{name}", child) for name, child in container.named_children()]


def choose_stage(sides: Sequence[int], min_side: int = MIN_MAP_SIDE) -> int:
    """Index of the stage Grad-CAM reads, given each stage's shorter map side in depth order: the
    deepest with at least `min_side` cells, else the deepest of the largest."""
    if not sides:
        raise ValueError("the model has no stage for Grad-CAM to read")
    large_enough = [index for index, side in enumerate(sides) if side >= min_side]
    if large_enough:
        return large_enough[-1]
    largest = max(sides)
    return max(index for index, side in enumerate(sides) if side == largest)


@contextmanager
def _stage_outputs(stages: list[tuple[str, nn.Module]]) -> Iterator[dict[int, torch.Tensor]]:
    """Each stage's output of the forward passes run inside, by stage index."""
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _module, _inputs, output, index=index: outputs.__setitem__(index, output)
        )
        for index, (_name, module) in enumerate(stages)
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _chosen_stage(outputs: dict[int, torch.Tensor], min_side: int) -> int:
    return choose_stage([min(outputs[index].shape[-2:]) for index in range(len(outputs))], min_side)


def gradcam_layer(
    model: RadiographClassifier, image_size: int, min_side: int = MIN_MAP_SIDE
) -> GradcamLayer:
    """The stage `gradcam` reads for `image_size` px inputs, found with one probe forward pass
    (eval mode, no gradients; the model gets its mode back)."""
    stages = gradcam_stages(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with _stage_outputs(stages) as outputs, torch.no_grad():
            model(torch.zeros(1, 1, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    index = _chosen_stage(outputs, min_side)
    height, width = outputs[index].shape[-2:]
    return GradcamLayer(stages[index][0], (int(height), int(width)))


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
    min_side: int = MIN_MAP_SIDE,
) -> np.ndarray:
    """Heat maps [B, H, W] in [0, 1] at input resolution for `images` [B, 1, H, W].

    `target_classes` picks the explained class per image (default: the predicted class). The map
    comes from the stage `choose_stage` picks (`min_side=1` reads the last stage). The model runs
    in eval mode and gets its previous mode back.
    """
    was_training = model.training
    model.eval()
    try:
        with _stage_outputs(gradcam_stages(model)) as outputs, torch.enable_grad():
            # An input that requires grad keeps the graph alive even when every parameter is frozen.
            inputs = images.detach().clone().requires_grad_(True)
            logits = model(inputs)
            if target_classes is None:
                targets = logits.argmax(dim=1)
            else:
                targets = torch.as_tensor(list(target_classes), device=logits.device)
                if targets.shape != (logits.shape[0],):
                    raise ValueError(f"need one target class per image, got {len(targets)}")
            activations = outputs[_chosen_stage(outputs, min_side)]
            scores = logits.gather(1, targets.view(-1, 1)).sum()
            (gradients,) = torch.autograd.grad(scores, activations)
    finally:
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


@dataclass(frozen=True)
class LocalisationSummary:
    """Grad-CAM of the true class against the known lesion, over the images that have one.

    `pointing_game`: share of heat maps whose peak lies inside the lesion; `energy_inside`: mean
    share of heat inside it; `mask_area`: mean share of the image the lesion covers, which is what
    a uniform heat map would score on `energy_inside` (the chance level to compare with).
    """

    images: int
    pointing_game: float
    energy_inside: float
    mask_area: float


def score_localisation(
    model: RadiographClassifier,
    dataset: Dataset[tuple[torch.Tensor, int]],
    masks: np.ndarray | None,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    min_side: int = MIN_MAP_SIDE,
) -> LocalisationSummary | None:
    """Score `model`'s heat maps on `dataset` (items: image [1, S, S], class index in the model's
    classes) against `masks` (bool [N, S, S], all False where an image shows no lesion).

    Only images with a lesion count, the first `limit` of them if given; None when there are no
    masks or no lesion, so a clinic without phantoms reports nothing rather than a zero.
    """
    if masks is None:
        return None
    if len(masks) != len(dataset):
        raise ValueError(f"{len(masks)} masks for {len(dataset)} images")
    chosen = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))[:limit]
    if not len(chosen):
        return None
    device = next(model.parameters()).device
    hits, energies = [], []
    for start in range(0, len(chosen), batch_size):
        rows = chosen[start : start + batch_size].tolist()
        items = [dataset[row] for row in rows]
        images = torch.stack([image for image, _ in items]).to(device)
        heatmaps = gradcam(model, images, [label for _, label in items], min_side)
        for heatmap, row in zip(heatmaps, rows, strict=True):
            score = localisation_score(heatmap, masks[row])
            hits.append(score["pointing_game_hit"])
            energies.append(score["energy_inside"])
    return LocalisationSummary(
        images=len(chosen),
        pointing_game=float(np.mean(hits)),
        energy_inside=float(np.mean(energies)),
        mask_area=float(masks[chosen].mean()),
    )
