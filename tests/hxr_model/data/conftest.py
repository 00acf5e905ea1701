"""Data-test plumbing: a private image cache (`radiograph_files` is registered by the root
conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test its own image cache, so none reads another's entries or ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("HXR_CACHE_DIR", str(path))
    return path
