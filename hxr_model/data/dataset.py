"""The dataset every trainer, evaluator and partitioner sees, whatever the images came from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class RadiographDataset(Dataset[tuple[torch.Tensor, int]]):
    """Decoded, resized radiographs held as uint8 [N, S, S]; item i is (float32 [1, S, S] in
    [0, 1], class index). Keeping uint8 makes a 10k-image set at 128 px weigh 160 MB, not 650.

    `names` identify images in reports (relative file paths); `patient_ids` and `sources` may hold
    None where unknown; `masks` (bool [N, S, S]) exist only where lesions are known (phantoms).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        *,
        names: Sequence[str] | None = None,
        patient_ids: Sequence[str | None] | None = None,
        sources: Sequence[str | None] | None = None,
        masks: np.ndarray | None = None,
    ) -> None:
        count = len(images)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be uint8 [N,S,S], got {images.dtype} {images.shape}")
        if len(labels) != count or (masks is not None and masks.shape != images.shape):
            raise ValueError("labels and masks must match the images")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.image_size = int(images.shape[1])
        self.names = list(names) if names is not None else [f"#{i}" for i in range(count)]
        self.patient_ids = list(patient_ids) if patient_ids is not None else [None] * count
        self.sources = list(sources) if sources is not None else [None] * count
        self.masks = masks
        if not len(self.names) == len(self.patient_ids) == len(self.sources) == count:
            raise ValueError("names, patient_ids and sources must match the images")
        if count and not 0 <= self.labels.min() <= self.labels.max() < len(self.class_names):
            raise ValueError("labels must index class_names")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index].astype(np.float32) / 255.0)
        return image.unsqueeze(0), int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as float32 [N, 1, S, S] and labels as int64 [N]: small sets train faster
        from two tensors than through a DataLoader."""
        images = torch.from_numpy(self.images.astype(np.float32) / 255.0).unsqueeze(1)
        return images, torch.from_numpy(self.labels.copy())

    def subset(self, indices: Sequence[int] | np.ndarray) -> RadiographDataset:
        rows = np.asarray(indices, dtype=np.int64)
        return RadiographDataset(
            self.images[rows],
            self.labels[rows],
            self.class_names,
            names=[self.names[i] for i in rows],
            patient_ids=[self.patient_ids[i] for i in rows],
            sources=[self.sources[i] for i in rows],
            masks=None if self.masks is None else self.masks[rows],
        )

    def image_array(self, index: int) -> np.ndarray:
        return self.images[index]

    def lesion_mask(self, index: int) -> np.ndarray | None:
        return None if self.masks is None else self.masks[index]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.class_names))
