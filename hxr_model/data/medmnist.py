"""MedMNIST `.npz` files (`medmnist:PATH`) and the PneumoniaMNIST download (`pneumoniamnist`).

The official layout is `{train,val,test}_images` / `_labels` pairs; files in the wild hold any
subset of them (the shared copy has no test split), and the loader accepts whichever are there.
"""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from hxr_model.atomic_files import write_atomic
from hxr_model.data.catalog import SPLITS, Catalog, Entry
from hxr_model.errors import DataError

PNEUMONIAMNIST_URL = "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
PNEUMONIAMNIST_MD5 = "28209eda62fecd6e6a2d98b1501bb15f"
DOWNLOAD_TIMEOUT_S = 10
# Class names the MedMNIST INFO table gives, by file-name prefix; other sets get "0", "1", ...
KNOWN_CLASS_NAMES = {"pneumoniamnist": ("normal", "pneumonia")}
# Class names are made for 0..max label; a stray huge label must not make a billion of them.
MAX_CLASSES = 1000
# The largest official MedMNIST array (224 px images of the biggest set) is about 10 GiB.
MAX_MEMBER_BYTES = 16 * 2**30
_LUMA = np.array([0.299, 0.587, 0.114])


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(f"medmnist:{path}: not a readable .npz file: {error}")


def _check_member_sizes(path: Path) -> None:
    """Refuse members that would inflate past MAX_MEMBER_BYTES before numpy decompresses them:
    a few kilobytes of zip can declare gigabytes."""
    try:
        # `is_zipfile` reads only the end record: a damaged central directory fails here.
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except Exception as error:
        raise _unreadable(path, error) from None
    for member in members:
        if member.file_size > MAX_MEMBER_BYTES:
            raise DataError(
                f"medmnist:{path}: member {member.filename} would inflate to "
                f"{member.file_size / 2**30:.1f} GiB (limit {MAX_MEMBER_BYTES / 2**30:g} GiB)"
            )


def list_medmnist(path: Path) -> Catalog:
    if not path.is_file():
        raise DataError(f"medmnist:{path}: no such file")
    if not zipfile.is_zipfile(path):
        # np.load would try it as a pickle and blame "object data" for any non-archive.
        raise DataError(
            f"medmnist:{path}: not a .npz archive (corrupt, truncated or another format)"
        )
    _check_member_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        # A damaged archive makes zipfile, zlib and numpy raise almost anything (BadZipFile,
        # zlib.error, RuntimeError for encrypted members, NotImplementedError, EOFError, ...).
        raise _unreadable(path, error) from None
    splits = [split for split in SPLITS if f"{split}_images" in arrays]
    if not splits:
        raise DataError(
            f"medmnist:{path}: no train_images/val_images/test_images arrays "
            f"(has: {', '.join(arrays) or 'nothing'})"
        )
    per_split = {split: _split_arrays(path, arrays, split) for split in splits}
    num_classes = 1 + max(
        (int(labels.max()) for _, labels in per_split.values() if labels.size), default=1
    )
    names = _class_names(path, num_classes)
    entries = [
        Entry(f"{path.name}:{split}/{index}", names[label], split, pixels=image)
        for split, (images, labels) in per_split.items()
        for index, (image, label) in enumerate(zip(images, labels.tolist(), strict=True))
    ]
    return Catalog(entries, list(names))


def _split_arrays(
    path: Path, arrays: dict[str, np.ndarray], split: str
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = arrays[f"{split}_images"], arrays.get(f"{split}_labels")
    if labels is None:
        raise DataError(f"medmnist:{path}: has {split}_images but no {split}_labels")
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DataError(
            f"medmnist:{path}: {split}_labels has {labels.shape[1]} columns (multi-label); "
            "only single-label classification sets are supported"
        )
    labels = labels.reshape(-1)
    if images.ndim == 4 and images.shape[-1] == 3 and images.dtype == np.uint8:
        images = np.round(images @ _LUMA).astype(np.uint8)
    if (
        images.ndim != 3
        or images.dtype != np.uint8
        or len(images) != len(labels)
        or 0 in images.shape[1:]
    ):
        raise DataError(
            f"medmnist:{path}: {split}_images must be uint8 [N,H,W] matching {len(labels)} labels, "
            f"got {images.dtype} {list(images.shape)}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DataError(f"medmnist:{path}: {split}_labels must be non-negative integers")
    if labels.size and labels.max() >= MAX_CLASSES:
        raise DataError(
            f"medmnist:{path}: {split}_labels holds label {labels.max()}; at most "
            f"{MAX_CLASSES} classes (labels 0-{MAX_CLASSES - 1}) are supported"
        )
    return images, labels.astype(np.int64)


def _class_names(path: Path, num_classes: int) -> tuple[str, ...]:
    for prefix, names in KNOWN_CLASS_NAMES.items():
        if path.name.startswith(prefix) and len(names) >= num_classes:
            return names
    return tuple(str(index) for index in range(num_classes))


def pneumoniamnist_path(cache_dir: Path) -> Path:
    """The official PneumoniaMNIST file, downloaded once into `cache_dir` and MD5-checked."""
    target = cache_dir / "medmnist" / "pneumoniamnist.npz"
    if target.is_file() and _md5(target) == PNEUMONIAMNIST_MD5:
        return target
    write_atomic(target, _download_checked)
    return target


def _download_checked(stream: io.BufferedWriter) -> None:
    """Download into `stream`, raising on a wrong MD5 so a bad download never becomes the file."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(PNEUMONIAMNIST_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                stream.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        raise DataError(
            f"pneumoniamnist: cannot download {PNEUMONIAMNIST_URL} ({error}); offline? Fetch "
            "pneumoniamnist.npz elsewhere and use medmnist:/path/to/pneumoniamnist.npz"
        ) from None
    if digest.hexdigest() != PNEUMONIAMNIST_MD5:
        raise DataError(
            f"pneumoniamnist: download from {PNEUMONIAMNIST_URL} has MD5 {digest.hexdigest()}, "
            f"expected {PNEUMONIAMNIST_MD5}; download it by hand and use medmnist:PATH"
        )


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
