"""Data references: the one string that names a dataset everywhere (CLI, site configs, runs)."""

from __future__ import annotations

from pathlib import Path

from hxr_model.data.catalog import Catalog, combine_catalogs
from hxr_model.data.files import list_folder, list_manifest
from hxr_model.data.medmnist import list_medmnist, pneumoniamnist_path
from hxr_model.data.synthetic import DEFAULT_COUNT, list_synthetic
from hxr_model.errors import DataError

REF_FORMS = (
    "medmnist:PATH, pneumoniamnist, folder:DIR, csv:FILE or synthetic[:N[:SITES]], or several "
    "joined by '+'"
)
# Joins references into one dataset (e.g. two hospitals' manifests whose patients overlap), so
# splitting by patient runs across all of them at once.
REF_SEPARATOR = "+"
DEFAULT_IMAGE_SIZE = 64
# Radiograph files (folders, manifests, DICOM) train at clinical resolution unless told: on
# cxr4, pre-warmed HXR-150 at 128 px scores within 0.4-2.2 points of 224 px on a patient-grouped
# test split in half the CPU time, and 64 px maps a lesion to a few feature cells
# (docs/benchmarks.md).
FILE_IMAGE_SIZE = 128
# The reference forms whose argument is a file or folder.
PATH_KINDS = ("medmnist", "folder", "csv")
# The reference forms that name radiograph files.
FILE_KINDS = ("folder", "csv")


def default_image_size(ref: str, cache_dir: Path) -> int:
    """The size to train at when the user names none: a MedMNIST release's own resolution (it
    was made at that size; upsampling costs time and adds nothing), FILE_IMAGE_SIZE where any
    source is a folder or manifest of radiograph files, else (phantoms) DEFAULT_IMAGE_SIZE."""
    if REF_SEPARATOR not in ref and (ref == "pneumoniamnist" or ref.startswith("medmnist:")):
        entries = open_catalog(ref, DEFAULT_IMAGE_SIZE, cache_dir).entries
        if entries and entries[0].pixels is not None:
            return int(entries[0].pixels.shape[-1])
    return FILE_IMAGE_SIZE if names_radiograph_files(ref) else DEFAULT_IMAGE_SIZE


def names_radiograph_files(ref: str) -> bool:
    """Whether any source `ref` joins is a folder or manifest of radiograph files (PNG, JPEG,
    DICOM): real images at their own resolution, as a clinic holds them."""
    return any(part.partition(":")[0] in FILE_KINDS for part in ref.split(REF_SEPARATOR))


def open_catalog(ref: str, image_size: int, cache_dir: Path) -> Catalog:
    """List the images `ref` names; `image_size` is only used by the synthetic source, which
    renders at the final size instead of resizing."""
    if REF_SEPARATOR in ref:
        parts = ref.split(REF_SEPARATOR)
        return combine_catalogs(
            [(part, open_catalog(part, image_size, cache_dir)) for part in parts]
        )
    kind, _, argument = ref.partition(":")
    if kind == "synthetic":
        count, sites = _synthetic_arguments(ref, argument)
        return list_synthetic(count, sites, image_size)
    if ref == "pneumoniamnist":
        return list_medmnist(pneumoniamnist_path(cache_dir))
    listers = dict(zip(PATH_KINDS, (list_medmnist, list_folder, list_manifest), strict=True))
    if kind not in listers or not argument:
        raise DataError(f"unknown data reference '{ref}': use {REF_FORMS}")
    return listers[kind](Path(argument).expanduser())


def anchor_ref(ref: str, base: Path) -> str:
    """`ref` with a relative file path read from `base`: a site TOML's `folder:xr` means the
    `xr` beside the TOML, wherever the client process happens to run."""
    if REF_SEPARATOR in ref:
        return REF_SEPARATOR.join(anchor_ref(part, base) for part in ref.split(REF_SEPARATOR))
    kind, _, argument = ref.partition(":")
    if kind not in PATH_KINDS or not argument:
        return ref
    path = Path(argument).expanduser()
    return ref if path.is_absolute() else f"{kind}:{base / path}"


def _synthetic_arguments(ref: str, argument: str) -> tuple[int, int | None]:
    parts = argument.split(":") if argument else []
    if len(parts) > 2 or not all(part.isdigit() for part in parts):
        raise DataError(
            f"bad data reference '{ref}': use synthetic, synthetic:N or synthetic:N:SITES"
        )
    count = int(parts[0]) if parts else DEFAULT_COUNT
    return count, int(parts[1]) if len(parts) == 2 else None
