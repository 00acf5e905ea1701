"""Grad-CAM samples on the wire: a few small uint8 heat maps (and downscaled images where a
site's policy allows them), with their true and predicted classes.

The coordinator checks a sample set like any other reply content before decoding it: at most
`per_class` samples of each class, square uint8 arrays no larger than the agreed side (a site
may cap it lower), labels that are federation classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from protocol.arrays import ArrayMismatch, ArraySpec, decode_checked, to_record
from protocol.records import (
    GRADCAM_ARRAYS_KEY,
    GRADCAM_HEATMAPS,
    GRADCAM_IMAGES,
    GRADCAM_LABELS,
    GRADCAM_META_KEY,
    GRADCAM_PREDICTIONS,
)


@dataclass
class GradcamSamples:
    heatmaps: np.ndarray  # uint8 [N, side, side]
    images: np.ndarray | None  # uint8 [N, side, side], `overlay` policy only
    labels: list[int]
    predictions: list[int]

    def to_records(self) -> dict[str, object]:
        arrays = {GRADCAM_HEATMAPS: self.heatmaps}
        if self.images is not None:
            arrays[GRADCAM_IMAGES] = self.images
        return {
            GRADCAM_ARRAYS_KEY: to_record(arrays),
            GRADCAM_META_KEY: ConfigRecord(
                {GRADCAM_LABELS: self.labels, GRADCAM_PREDICTIONS: self.predictions}
            ),
        }


def parse_samples(
    content: RecordDict, num_classes: int, per_class: int, side: int
) -> GradcamSamples | None:
    """The Grad-CAM records of an evaluate reply, or None if the site sent none.

    Raises ValueError naming what is wrong with a malformed sample set.
    """
    if GRADCAM_ARRAYS_KEY not in content.array_records:
        return None
    if GRADCAM_META_KEY not in content.config_records:
        raise ValueError("Grad-CAM arrays without their labels")
    meta = content.config_records[GRADCAM_META_KEY]
    labels = meta.get(GRADCAM_LABELS, [])
    predictions = meta.get(GRADCAM_PREDICTIONS, [])
    if not isinstance(labels, list) or not isinstance(predictions, list):
        raise ValueError("Grad-CAM labels must be lists")
    count = len(labels)
    if not 0 < count <= num_classes * per_class or len(predictions) != count:
        raise ValueError(f"{count} Grad-CAM labels for at most {num_classes * per_class} samples")
    if not all(isinstance(v, int) and 0 <= v < num_classes for v in labels + predictions):
        raise ValueError("Grad-CAM labels outside the federation's classes")
    if any(labels.count(label) > per_class for label in set(labels)):
        raise ValueError(f"more than {per_class} Grad-CAM samples of one class")
    record = content.array_records[GRADCAM_ARRAYS_KEY]
    if GRADCAM_HEATMAPS not in record:
        raise ValueError(f"Grad-CAM arrays without '{GRADCAM_HEATMAPS}'")
    # A site may share smaller samples than the coordinator asked for (its own cap), not larger.
    shape = tuple(record[GRADCAM_HEATMAPS].shape)
    if len(shape) != 3 or shape[0] != count or shape[1] != shape[2] or not 1 <= shape[1] <= side:
        raise ValueError(f"Grad-CAM heat maps must be {count} squares of at most {side} px")
    spec = ArraySpec(np.dtype(np.uint8), shape)
    expected = {name: spec for name in (GRADCAM_HEATMAPS, GRADCAM_IMAGES) if name in record}
    try:
        arrays = decode_checked(record, expected)
    except ArrayMismatch as error:
        raise ValueError(f"Grad-CAM {error}") from None
    return GradcamSamples(
        arrays[GRADCAM_HEATMAPS], arrays.get(GRADCAM_IMAGES), list(labels), list(predictions)
    )
