"""Read every image a data reference lists and sort it into usable images and problems.

Shared by `load_splits` (which refuses or skips the problems) and `hxr data check` (which
reports them), so training can never accept a file the check would have flagged.
"""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hxr_model.data.cache import ImageCache, content_hash, default_cache_dir
from hxr_model.data.catalog import SPLITS, Entry, natural_key
from hxr_model.data.dataset import RadiographDataset
from hxr_model.data.decoding import decode_image_bytes
from hxr_model.data.problems import FileProblem, ImageProblem
from hxr_model.data.refs import open_catalog
from hxr_model.data.resizing import RESIZE_MODES, ResizeMode, to_square
from hxr_model.errors import ConfigError

MIN_SIZE, MAX_SIZE = 8, 1024
# Reading a file whole is how it is hashed and decoded; refuse what cannot be a radiograph.
MAX_FILE_BYTES = 512 * 1024 * 1024
_SPLIT_RANK = {split: rank for rank, split in enumerate((*SPLITS, None))}


@dataclass
class Scan:
    """Usable images (in listing order), the split the source gave each (None when it gave
    none), every problem found, sorted by file name, and warnings: duplicates inside a published
    array release (MedMNIST), which are reported but kept so its official splits stay the ones
    the literature reports on."""

    dataset: RadiographDataset
    splits: list[str | None]
    problems: list[FileProblem]
    warnings: list[FileProblem]


def scan(
    ref: str,
    image_size: int,
    *,
    resize: ResizeMode = "pad",
    label_map: dict[str, str] | None = None,
    cache_dir: Path | None = None,
) -> Scan:
    """Decode (or fetch from the cache) every image of `ref` at `image_size` px.

    `label_map` maps source labels to class names (several labels may share a class; class order
    is the order of first appearance among the values); labels not in it are problems.
    """
    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ConfigError(f"image size must be {MIN_SIZE}-{MAX_SIZE} px, got {image_size}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got '{resize}'")
    root = cache_dir or default_cache_dir()
    catalog = open_catalog(ref, image_size, root)
    class_names = list(dict.fromkeys(label_map.values())) if label_map else catalog.class_names
    class_of = {raw: class_names.index(name) for raw, name in (label_map or {}).items()} or {
        name: index for index, name in enumerate(class_names)
    }
    cache = ImageCache(root, image_size, resize)
    problems = list(catalog.problems)
    loaded: list[tuple[Entry, np.ndarray, str]] = []
    for entry in catalog.entries:
        try:
            if entry.label not in class_of:
                known = ", ".join(class_of)
                raise ImageProblem(
                    "unknown-label", f"label '{entry.label}' is not in the label map ({known})"
                )
            loaded.append((entry, *_load(entry, image_size, resize, cache)))
        except ImageProblem as problem:
            problems.append(FileProblem(entry.name, problem.reason, problem.kind))
    cache.flush()
    findings = _duplicates_and_crossings([entry for entry, _, _ in loaded], [h for *_, h in loaded])
    published = {i for i, (entry, _, _) in enumerate(loaded) if entry.pixels is not None}
    warnings = [findings[i] for i in sorted(findings) if i in published]
    rejected = {i: problem for i, problem in findings.items() if i not in published}
    problems.extend(rejected.values())
    good = [item for index, item in enumerate(loaded) if index not in rejected]
    entries = [entry for entry, _, _ in good]
    dataset = RadiographDataset(
        np.stack([image for _, image, _ in good])
        if good
        else np.zeros((0, image_size, image_size), np.uint8),
        np.array([class_of[entry.label] for entry in entries], dtype=np.int64),
        class_names,
        names=[entry.name for entry in entries],
        patient_ids=[entry.patient_id for entry in entries],
        sources=[entry.source for entry in entries],
        masks=np.stack([entry.mask for entry in entries])
        if entries and all(entry.mask is not None for entry in entries)
        else None,
    )
    splits = [entry.split for entry in entries]
    return Scan(
        dataset, splits, sorted(problems, key=lambda problem: natural_key(problem.path)), warnings
    )


def _load(
    entry: Entry, image_size: int, resize: ResizeMode, cache: ImageCache
) -> tuple[np.ndarray, str]:
    """(uint8 [S, S] image, hash of the full-resolution pixels) for one entry."""
    if entry.pixels is not None:
        pixels = entry.pixels
        image = (
            pixels
            if pixels.shape == (image_size, image_size)
            else to_square(pixels.astype(np.float32) / 255.0, image_size, resize)
        )
        return image, _pixel_hash(pixels)
    assert entry.path is not None
    data = _read(entry.path)
    key = content_hash(data)
    cached = cache.get(key)
    if cached is not None:
        return cached
    decoded = decode_image_bytes(data, entry.path.name)
    image, pixel_hash = to_square(decoded, image_size, resize), _pixel_hash(decoded)
    cache.put(key, image, pixel_hash)
    return image, pixel_hash


def _read(path: Path) -> bytes:
    """A manifest may name anything: a FIFO would block `open` forever and a device or /proc
    file (size 0) would be read without end, so only regular files are opened, and no more
    than the limit is ever read."""
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise ImageProblem("unreadable", "not a regular file")
        if status.st_size > MAX_FILE_BYTES:
            raise _too_large(status.st_size)
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ImageProblem("missing", "file not found") from None
    except OSError as error:
        raise ImageProblem("unreadable", f"cannot read file: {error.strerror}") from None
    except ValueError as error:  # a NUL byte in a manifest path
        raise ImageProblem("unreadable", f"invalid file path: {error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _too_large(len(data))
    return data


def _too_large(size: int) -> ImageProblem:
    return ImageProblem(
        "too-large",
        f"file is {size / 2**20:.0f} MiB or more, over the "
        f"{MAX_FILE_BYTES / 2**20:.0f} MiB limit for one radiograph",
    )


def _pixel_hash(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels))
    return digest.hexdigest()


def _duplicates_and_crossings(
    entries: list[Entry], pixel_hashes: list[str]
) -> dict[int, FileProblem]:
    """Problems by entry index. The copy kept is the one in the earliest split (train, val,
    test), then the first listed; a patient stays in the first split it appears in."""
    order = sorted(range(len(entries)), key=lambda i: (_SPLIT_RANK[entries[i].split], i))
    first_copy: dict[str, int] = {}
    first_split: dict[str, str] = {}
    problems: dict[int, FileProblem] = {}
    for index in order:
        entry = entries[index]
        original = first_copy.setdefault(pixel_hashes[index], index)
        if original != index:
            kept = entries[original]
            where = f" in {kept.split}, leaking across splits" if kept.split != entry.split else ""
            problems[index] = FileProblem(
                entry.name, f"duplicate (same pixels) of {kept.name}{where}", "duplicate"
            )
            continue
        if entry.patient_id is None or entry.split is None:
            continue
        split = first_split.setdefault(entry.patient_id, entry.split)
        if split != entry.split:
            problems[index] = FileProblem(
                entry.name,
                f"patient {entry.patient_id} is in {split} and {entry.split}",
                "patient-crosses-splits",
            )
    return problems
