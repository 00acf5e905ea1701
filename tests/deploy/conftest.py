"""Shared by the deployment tests: a private image cache and tiny clinic image folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HXR_CACHE_DIR", str(tmp_path / "cache"))


def write_clinic(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """`root/{NORMAL,PNEUMONIA}/*.png`, 32 px (the data layer's minimum), labels named the way
    a clinic's archive names them; PNEUMONIA images hold a bright square so there is a signal."""
    rng = np.random.default_rng(seed)
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 160, (32, 32), dtype=np.uint8)
            if label == "PNEUMONIA":
                top, left = rng.integers(0, 20, 2)
                pixels[top : top + 12, left : left + 12] = 255
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return root


@pytest.fixture(scope="session")
def make_clinic() -> Callable[..., Path]:
    return write_clinic
