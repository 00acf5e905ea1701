"""Data-test plumbing: the file builders as an importable module, and a private image cache.

Tests run in pytest's importlib mode (no test folder on sys.path), so `radiograph_files` is
registered here, before this folder's test modules import it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "radiograph_files", Path(__file__).with_name("radiograph_files.py")
)
assert _spec is not None and _spec.loader is not None
radiograph_files = importlib.util.module_from_spec(_spec)
sys.modules["radiograph_files"] = radiograph_files
_spec.loader.exec_module(radiograph_files)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test its own image cache, so none reads another's entries or ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("HXR_CACHE_DIR", str(path))
    return path
