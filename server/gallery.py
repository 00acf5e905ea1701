"""The server's Grad-CAM gallery: the samples sites sent (checked by
`protocol.gradcam_samples.parse_samples`), rendered as owner-only PNGs in the run folder."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from hxr_model.atomic_files import write_atomic
from hxr_model.gradcam import COLORMAP, overlay_image
from protocol.gradcam_samples import GradcamSamples

DISPLAY_SIZE = 96


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
    samples: GradcamSamples,
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
