"""On-disk cache of decoded, resized images, so a second run never decodes a large DICOM again.

Entries are keyed by the SHA-256 of a file's bytes (moving a file keeps its entry, editing it
does not) within a directory per output geometry. Each scan that decodes new images appends one
shard: a memory-mapped `.npy` of images plus a JSON index of keys and pixel hashes, written
index-last and atomically, so clients loading the same data in parallel never read half a shard
and a 1,500-image set costs two file writes, not 1,500.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from hxr_model.atomic_files import write_atomic

# Bump when decoding or resizing changes what an entry holds.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """`$HXR_CACHE_DIR`, else `$XDG_CACHE_HOME/hxr`, else `~/.cache/hxr`."""
    if "HXR_CACHE_DIR" in os.environ:
        return Path(os.environ["HXR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hxr"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ImageCache:
    """Resized uint8 image and full-resolution pixel hash (for duplicate checks) per file key."""

    def __init__(self, root: Path, image_size: int, resize: str) -> None:
        self.directory = root / f"images-v{CACHE_FORMAT}" / f"{image_size}px-{resize}"
        self.image_size = image_size
        self._index: dict[str, tuple[np.ndarray, int, str]] | None = None
        self._pending: list[tuple[str, np.ndarray, str]] = []
        self.writable = True

    def get(self, key: str) -> tuple[np.ndarray, str] | None:
        if self._index is None:
            self._index = self._read_index()
        hit = self._index.get(key)
        return None if hit is None else (np.array(hit[0][hit[1]]), hit[2])

    def _read_index(self) -> dict[str, tuple[np.ndarray, int, str]]:
        """Every complete shard; an unreadable one only means its images are decoded again."""
        index: dict[str, tuple[np.ndarray, int, str]] = {}
        for manifest in sorted(self.directory.glob("shard-*.json")):
            try:
                shard = json.loads(manifest.read_text())
                images = np.load(manifest.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
                keys, hashes = shard["keys"], shard["pixel_hashes"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not _is_complete(images, keys, hashes, self.image_size):
                continue
            index.update(
                (key, (images, row, pixel_hash))
                for row, (key, pixel_hash) in enumerate(zip(keys, hashes, strict=True))
            )
        return index

    def put(self, key: str, image: np.ndarray, pixel_hash: str) -> None:
        """Queue an entry; `flush` writes the queue as one shard."""
        self._pending.append((key, image, pixel_hash))

    def flush(self) -> None:
        """Write queued entries. A cache that cannot be written (read-only home) only costs
        speed, so it warns once and stops trying instead of failing the load."""
        if not self._pending or not self.writable:
            return
        keys, images, hashes = zip(*self._pending, strict=True)
        self._pending = []
        shard = self.directory / f"shard-{uuid.uuid4().hex}"
        try:
            write_atomic(shard.with_suffix(".npy"), lambda f: np.save(f, np.stack(images)))
            index = {"keys": list(keys), "pixel_hashes": list(hashes)}
            write_atomic(shard.with_suffix(".json"), lambda f: f.write(json.dumps(index).encode()))
        except OSError as error:
            self.writable = False
            warnings.warn(
                f"image cache disabled, cannot write {self.directory}: {error}", stacklevel=2
            )


def _is_complete(images: np.ndarray, keys: object, hashes: object, image_size: int) -> bool:
    """A shard damaged on disk (or written by other code) must not hand out wrong images."""
    return (
        isinstance(keys, list)
        and isinstance(hashes, list)
        and images.dtype == np.uint8
        and images.shape == (len(keys), image_size, image_size)
        and len(hashes) == len(keys)
        and all(isinstance(item, str) for item in (*keys, *hashes))
    )
