"""Any decoded radiograph -> uint8 [S, S]: the one geometry every model and cache entry shares."""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

ResizeMode = Literal["pad", "crop"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("pad", "crop")


def to_square(image: np.ndarray, size: int, mode: ResizeMode = "pad") -> np.ndarray:
    """Pad (black borders, keeps the whole chest) or centre-crop (keeps the scale, may cut the
    costophrenic angles) a float [H, W] image in [0, 1] to a square, then resize to `size`.

    Shrinking averages areas (no ringing at rib and device edges, exact on flat regions);
    enlarging (28 px MedMNIST) interpolates bilinearly.
    """
    height, width = image.shape
    side = max(height, width) if mode == "pad" else min(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    if mode == "pad":
        square = np.zeros((side, side), dtype=np.float32)
        square[top : top + height, left : left + width] = image
    else:
        square = np.asarray(image[-top : -top + side, -left : -left + side], dtype=np.float32)
    if side != size:
        resample = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
        square = np.asarray(Image.fromarray(square).resize((size, size), resample))
    return np.round(np.clip(square, 0.0, 1.0) * 255.0).astype(np.uint8)
