"""Broken input, generated: whatever bytes, headers or arrays a site hands the data layer, it
either yields valid images or refuses them with its own error types, and never hangs.

test_decoding.py fuzzes PNG, JPEG and DICOM bytes; here the DICOM header fields behind every
grey level, the other formats Pillow reads, MedMNIST archives and arrays, CSV manifests naming
things that are not files, and damaged image-cache shards.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import radiograph_files
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from radiograph_files import byte_flips, damage, dicom_bytes, noise, png_bytes, quadrants

from hxr_model.data.cache import ImageCache
from hxr_model.data.catalog import Catalog
from hxr_model.data.decoding import decode_image_bytes
from hxr_model.data.medmnist import MAX_CLASSES, list_medmnist
from hxr_model.data.problems import ImageProblem
from hxr_model.data.scan import scan
from hxr_model.errors import DataError

# Generated inputs are small; the timeout is what turns a hang into a failure.
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
pytestmark = pytest.mark.timeout(120)


# --- DICOM: every header field that shapes the grey levels -------------------------------

_DS = st.one_of(
    st.sampled_from(["NaN", "inf", "-inf", "1e308", "-1e308", "0", "", "3\\4"]),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda value: f"{value:.6g}"),
)
_DICOM_FIELDS = {
    "RescaleSlope": ("DS", _DS),
    "RescaleIntercept": ("DS", _DS),
    "WindowCenter": ("DS", _DS),
    "WindowWidth": ("DS", _DS),
    "Rows": ("US", st.integers(0, 80)),
    "Columns": ("US", st.integers(0, 80)),
    "NumberOfFrames": ("IS", st.integers(-2, 3).map(str)),
    "BitsAllocated": ("US", st.sampled_from([1, 8, 16, 32, 64])),
    "BitsStored": ("US", st.integers(0, 40)),
    "HighBit": ("US", st.integers(0, 40)),
    "PixelRepresentation": ("US", st.integers(0, 1)),
    "SamplesPerPixel": ("US", st.integers(0, 4)),
    "PhotometricInterpretation": (
        "CS",
        st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", ""]),
    ),
}
_BASES = [
    dicom_bytes(quadrants([0, 10, 20, 30])),
    dicom_bytes(quadrants([50, 101, 102, 200]), voi_lut=(100, [0, 9, 4095], 12), window=(9, 4)),
]


def edited_dicom(base: int, fields: dict[str, object | None]) -> bytes:
    """A valid file with some header fields replaced (None: removed)."""
    dataset = pydicom.dcmread(io.BytesIO(_BASES[base]))
    for keyword, value in fields.items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
            continue
        vr, _ = _DICOM_FIELDS[keyword]
        dataset.add_new(pydicom.datadict.tag_for_keyword(keyword), vr, value)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # writing a non-conformant value is the point
        warnings.simplefilter("ignore")
        dataset.save_as(buffer)
    return buffer.getvalue()


@FAST
@given(
    st.integers(0, len(_BASES) - 1),
    st.fixed_dictionaries(
        {},
        optional={
            keyword: st.one_of(st.none(), values) for keyword, (_, values) in _DICOM_FIELDS.items()
        },
    ),
)
@example(0, {"RescaleSlope": "NaN", "RescaleIntercept": "0"})  # every grey level NaN
@example(0, {"WindowCenter": "inf", "WindowWidth": "inf"})
@example(0, {"RescaleSlope": "1e308", "RescaleIntercept": "0"})  # inf, then inf - inf
@example(0, {"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0})  # 16 frames of 32 x 32 came
@example(0, {"NumberOfFrames": "-1"})
def test_dicom_headers_give_the_declared_image_or_an_image_problem(
    base: int, fields: dict[str, object | None]
) -> None:
    data = edited_dicom(base, fields)
    try:
        image = decode_image_bytes(data, "x.dcm")
    except ImageProblem:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(io.BytesIO(data))
    radiograph_files.assert_usable(image, (int(dataset.Rows), int(dataset.Columns)))


def test_non_finite_rescale_and_pixel_count_mismatch_are_named() -> None:
    for fields, reason in [
        ({"RescaleSlope": "NaN", "RescaleIntercept": "0"}, "non-finite grey levels"),
        ({"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0}, "the header declares 32x32"),
        ({"NumberOfFrames": "-1"}, "-1 frames"),
    ]:
        with pytest.raises(ImageProblem, match=reason) as refused:
            decode_image_bytes(edited_dicom(0, fields), "x.dcm")
        assert refused.value.kind == "corrupt"


# --- The other formats Pillow reads -------------------------------------------------------


def _saved(image: Image.Image, format_name: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_name)
    return buffer.getvalue()


_GREY = Image.fromarray(noise(11, 40))
_WIDE = Image.fromarray(noise(12, 40).astype(np.uint16) * 257)
_PILLOW_SEEDS = [
    _saved(_GREY, "TIFF"),
    _saved(_WIDE, "TIFF"),
    _saved(Image.fromarray(noise(13, 40).astype(np.float32) * 1e6), "TIFF"),
    _saved(_GREY, "BMP"),
    _saved(_GREY.convert("P"), "GIF"),
    _saved(_GREY.convert("RGB"), "WEBP"),
    _saved(_GREY, "PPM"),
    _saved(_GREY.convert("RGBA"), "TGA"),
]


@pytest.mark.parametrize("index", range(len(_PILLOW_SEEDS)))
def test_other_pillow_formats_decode(index: int) -> None:
    radiograph_files.assert_usable(decode_image_bytes(_PILLOW_SEEDS[index], "x"), (40, 40))


@FAST
@given(st.integers(0, len(_PILLOW_SEEDS) - 1), byte_flips(10_000, 6), st.integers(1, 10_000))
def test_damaged_files_of_other_formats_only_raise_image_problem(
    seed: int, flips: list[tuple[int, int]], keep: int
) -> None:
    radiograph_files.assert_decodes_or_refuses(damage(_PILLOW_SEEDS[seed], flips, keep), "x")


# --- MedMNIST archives ---------------------------------------------------------------------


def _archive(compressed: bool) -> bytes:
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer,
        train_images=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 2, (6, 1)),
    )
    return buffer.getvalue()


_ARCHIVES = [_archive(False), _archive(True)]


def _list_npz(data: bytes) -> Catalog:
    """`list_medmnist` of `data` saved as a file (the catalog holds the pixels, not the file)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set.npz"
        path.write_bytes(data)
        return list_medmnist(path)


def _listing_or_data_error(data: bytes) -> None:
    try:
        catalog = _list_npz(data)
    except DataError:
        return
    assert all(entry.pixels is not None and entry.pixels.ndim == 2 for entry in catalog.entries)
    assert len(catalog.class_names) <= MAX_CLASSES


@FAST
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_npz_are_data_errors(data: bytes) -> None:
    _listing_or_data_error(data)


@FAST
@given(st.integers(0, len(_ARCHIVES) - 1), byte_flips(20_000, 4), st.integers(1, 20_000))
@example(1, [(67, 119)], 20_000)  # a broken deflate stream: zlib.error
@example(0, [(5140, 0)], 20_000)  # the central directory's signature: zipfile.BadZipFile
def test_damaged_npz_archives_are_data_errors(
    seed: int, flips: list[tuple[int, int]], keep: int
) -> None:
    _listing_or_data_error(damage(_ARCHIVES[seed], flips, keep))


def test_unreadable_archive_members_are_data_errors() -> None:
    """Flags a damaged zip can carry: an encrypted member (zipfile raises RuntimeError) and an
    unknown compression method (NotImplementedError)."""
    for offsets, value in [((6, 8), 0x01), ((8, 10), 99)]:
        data = bytearray(_ARCHIVES[0])
        for signature, offset in zip((b"PK\x03\x04", b"PK\x01\x02"), offsets, strict=True):
            start = data.find(signature)
            while start != -1:
                data[start + offset] |= value
                start = data.find(signature, start + 4)
        with pytest.raises(DataError, match=r"not a readable \.npz file"):
            _list_npz(bytes(data))


_IMAGE_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int64, np.float32, np.bool_])
_IMAGES = st.one_of(
    hnp.arrays(_IMAGE_DTYPES, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9)),
    hnp.arrays(np.uint8, st.tuples(st.integers(0, 4), st.integers(0, 9), st.integers(0, 9))),
)
_LABELS = st.one_of(
    hnp.arrays(
        st.sampled_from([np.int64, np.uint64, np.uint8, np.float64, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5),
    ),
    hnp.arrays(np.int64, st.integers(0, 4), elements=st.integers(-3, 2**62)),
)


@FAST
@given(_IMAGES, _LABELS)
@example(np.zeros((2, 28, 28), np.uint8), np.array([0, 10**12]))  # once a billion class names
@example(np.zeros((2, 0, 5), np.uint8), np.array([0, 1]))  # zero-size images
@example(np.zeros((2, 28, 28, 3), "<U1"), np.array([0, 1]))  # luma of text
def test_any_arrays_in_a_medmnist_file_load_or_are_data_errors(
    images: np.ndarray, labels: np.ndarray
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set.npz"
        np.savez(path, train_images=images, train_labels=labels)
        try:
            result = scan(f"medmnist:{path}", 16, cache_dir=Path(folder) / "cache")
        except DataError:
            return
    assert result.dataset.images.shape == (len(result.dataset), 16, 16)
    assert len(result.dataset.class_names) <= MAX_CLASSES


# --- CSV manifests ---------------------------------------------------------------------------

_CELLS = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@FAST
@given(st.lists(st.lists(_CELLS, min_size=0, max_size=6), max_size=6), st.booleans())
def test_any_manifest_text_lists_or_is_a_data_error(
    rows: list[list[str]], with_header: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.csv"
        (Path(folder) / "good.png").write_bytes(png_bytes(noise(1)))
        with manifest.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            if with_header:
                writer.writerow(["path", "label", "split", "patient_id", "source"])
            writer.writerows(rows)
        try:
            result = scan(f"csv:{manifest}", 16, cache_dir=Path(folder) / "cache")
        except DataError:
            return
    assert result.dataset.images.shape == (len(result.dataset), 16, 16)
    assert all(problem.kind and problem.reason for problem in result.problems)


def test_manifest_rows_naming_things_that_are_not_files_are_problems(tmp_path: Path) -> None:
    """A FIFO blocks `open` forever (it hung the scan) and a device such as /dev/zero would
    be read without end; neither is opened."""
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    manifest = tmp_path / "manifest.csv"
    targets = ["pipe.png", "/dev/null", "folder.png", "nul\0byte.png"]
    with manifest.open("w", newline="") as stream:
        csv.writer(stream).writerows([["path", "label"], *([name, "a"] for name in targets)])
    result = scan(f"csv:{manifest}", 16, cache_dir=tmp_path / "cache")
    assert {(problem.path, problem.kind) for problem in result.problems} == {
        (name, "unreadable") for name in targets
    }


# --- Image-cache shards --------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@FAST
@given(
    st.one_of(
        _JSON,
        st.fixed_dictionaries({"keys": _JSON, "pixel_hashes": _JSON}),
        st.just({"keys": ["k"], "pixel_hashes": ["h"]}),
    ),
    hnp.arrays(
        st.sampled_from([np.uint8, np.float64]),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=16),
    ),
)
@example({"keys": [["k"]], "pixel_hashes": ["h"]}, np.zeros((1, 16, 16), np.uint8))
@example({"keys": ["k"], "pixel_hashes": ["h"]}, np.zeros((1, 5), np.uint8))
def test_damaged_cache_shards_are_ignored(index: object, images: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as folder:
        cache = ImageCache(Path(folder), 16, "pad")
        cache.directory.mkdir(parents=True)
        np.save(cache.directory / "shard-x.npy", images)
        (cache.directory / "shard-x.json").write_text(json.dumps(index), encoding="utf-8")
        hit = ImageCache(Path(folder), 16, "pad").get("k")
    if hit is not None:
        assert hit[0].shape == (16, 16) and hit[0].dtype == np.uint8 and isinstance(hit[1], str)
