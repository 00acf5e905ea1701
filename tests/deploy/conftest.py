"""Shared by the deployment tests: a private image cache, tiny clinic image folders, the
real-process harness as an importable module, and a running consortium per test module.

Tests run in pytest's importlib mode (no test folder on sys.path), so `harness` is registered
here, before this folder's test modules import it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_spec = importlib.util.spec_from_file_location("harness", Path(__file__).with_name("harness.py"))
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
sys.modules["harness"] = harness
_spec.loader.exec_module(harness)


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


@pytest.fixture(scope="module")
def consortium(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    make_clinic: Callable[..., Path],
) -> Iterator[harness.Consortium]:
    """A consortium of the requesting module's `CLINICS`, shared by its tests (starting one
    takes minutes) and stopped after the last of them."""
    root = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    with harness.running_consortium(root, request.module.CLINICS, make_clinic) as link:
        yield link
