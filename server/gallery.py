"""The server's Grad-CAM gallery: checks the samples sites send and renders them as PNGs.

A site's samples are untrusted input like its weights: wrong shapes, types or sizes are refused
(the round's metrics still count) instead of crashing the server or filling its disk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from flwr.app import RecordDict
from PIL import Image

from client.instructions import GRADCAM_ARRAYS_KEY, GRADCAM_META_KEY
from hxr_model.gradcam import COLORMAP, overlay_image
from server.run_store import write_atomic

DISPLAY_SIZE = 96


@dataclass
class ReceivedSamples:
    heatmaps: np.ndarray  # uint8 [N, S, S]
    images: np.ndarray | None  # uint8 [N, S, S] for overlay sites
    labels: list[int]
    predictions: list[int]


def parse_samples(
    content: RecordDict, num_classes: int, per_class: int, size: int
) -> ReceivedSamples | None:
    """The Grad-CAM records of an evaluate reply, or None if the site sent none.

    Raises ValueError naming what is wrong with a malformed sample set.
    """
    if GRADCAM_ARRAYS_KEY not in content.array_records:
        return None
    arrays = {
        name: array.numpy() for name, array in content.array_records[GRADCAM_ARRAYS_KEY].items()
    }
    if GRADCAM_META_KEY not in content.config_records:
        raise ValueError("Grad-CAM arrays without their labels")
    meta = content.config_records[GRADCAM_META_KEY]
    labels, predictions = list(meta.get("labels", [])), list(meta.get("predictions", []))
    heatmaps, images = arrays.get("heatmaps"), arrays.get("images")
    if heatmaps is None or set(arrays) - {"heatmaps", "images"}:
        raise ValueError(f"unexpected Grad-CAM arrays {sorted(arrays)}")
    count = len(labels)
    expected_shape = (count, size, size)
    if not 0 < count <= num_classes * per_class or len(predictions) != count:
        raise ValueError(f"{count} Grad-CAM labels for at most {num_classes * per_class} samples")
    for name, array in (("heatmaps", heatmaps), ("images", images)):
        if array is not None and (array.dtype != np.uint8 or array.shape != expected_shape):
            raise ValueError(f"Grad-CAM {name} must be uint8 {expected_shape}")
    if not all(isinstance(v, int) and 0 <= v < num_classes for v in labels + predictions):
        raise ValueError("Grad-CAM labels outside the federation's classes")
    return ReceivedSamples(heatmaps, images, labels, predictions)


def render(heatmap: np.ndarray, image: np.ndarray | None) -> Image.Image:
    """A colour heat map, blended over the radiograph when the site shared one; enlarged."""
    if image is not None:
        picture = overlay_image(image, heatmap.astype(np.float32) / 255.0)
    else:
        colours = matplotlib.colormaps[COLORMAP](heatmap.astype(np.float32) / 255.0)[..., :3]
        picture = Image.fromarray(np.round(colours * 255).astype(np.uint8))
    return picture.resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.BILINEAR)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def save_gallery(
    gradcam_dir: Path,
    server_round: int,
    site: str,
    samples: ReceivedSamples,
    class_names: Sequence[str],
) -> list[Path]:
    """`gradcam/<site>/round-NNN/<k>_true-<class>_pred-<class>.png`, one file per sample."""
    folder = gradcam_dir / _slug(site) / f"round-{server_round:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (label, predicted) in enumerate(zip(samples.labels, samples.predictions, strict=True)):
        image = None if samples.images is None else samples.images[k]
        path = folder / (
            f"{k:02d}_true-{_slug(class_names[label])}_pred-{_slug(class_names[predicted])}.png"
        )
        picture = render(samples.heatmaps[k], image)
        # Owner-only like every run file: an overlay site's samples hold downscaled radiographs.
        write_atomic(path, lambda handle, picture=picture: picture.save(handle, format="PNG"))
        paths.append(path)
    return paths
