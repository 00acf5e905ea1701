"""Tiny labelled image sets for the library's tests (made in memory, in milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


class SquaresDataset(torch.utils.data.Dataset):
    """Class 1 images hold a bright square on a noisy background; class 0 images do not."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.class_names = ["empty", "square"]
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 2, count).astype(np.int64)
        images = rng.uniform(0.0, 0.3, (count, 1, size, size)).astype(np.float32)
        side = max(2, size // 4)
        for index in np.flatnonzero(self.labels):
            top, left = rng.integers(0, size - side, 2)
            images[index, 0, top : top + side, left : left + side] = 1.0
        self.images = torch.from_numpy(images)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@pytest.fixture
def squares_train() -> SquaresDataset:
    return SquaresDataset(96, 32, seed=1)


@pytest.fixture
def squares_val() -> SquaresDataset:
    return SquaresDataset(48, 32, seed=2)


@pytest.fixture
def make_squares() -> type[SquaresDataset]:
    return SquaresDataset
