"""Real files for the data tests: PNG, JPEG, DICOM (written with pydicom) and broken ones, and
what every decoded image must satisfy.

Imported by the data tests here and, by path, by the CLI tests (tests/ is not a package).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from hxr_model.data.decoding import decode_image_bytes
from hxr_model.data.problems import ImageProblem


def quadrants(values: Sequence[float], side: int = 32, dtype: type = np.uint16) -> np.ndarray:
    """A side x side image whose four quadrants (TL, TR, BL, BR) hold `values`."""
    half = side // 2
    image = np.empty((side, side), dtype=dtype)
    image[:half, :half], image[:half, half:], image[half:, :half], image[half:, half:] = values
    return image


def corner_values(image: np.ndarray) -> list[float]:
    """The TL, TR, BL, BR quadrant values of a `quadrants` image (read at the corners)."""
    return [float(image[0, 0]), float(image[0, -1]), float(image[-1, 0]), float(image[-1, -1])]


def png_bytes(image: np.ndarray) -> bytes:
    """8-bit or 16-bit grey PNG (from the array's dtype), RGB for [H, W, 3]."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def dicom_bytes(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[int, Sequence[int], int] | None = None,
    with_pixels: bool = True,
) -> bytes:
    """An uncompressed single-frame DICOM; `voi_lut` is (first mapped value, LUT entries, bits)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = 0
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    if rescale is not None:
        dataset.RescaleSlope, dataset.RescaleIntercept = rescale
    if voi_lut is not None:
        first, entries, bits = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(entries), first, bits]
        item.add_new(0x00283006, "OW", np.asarray(entries, dtype="<u2").tobytes())
        dataset.VOILUTSequence = [item]
    if with_pixels:
        dataset.PixelData = np.asarray(pixels, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def byte_flips(span: int, most: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Up to `most` (position, new byte value) pairs for `damage`, positions below `span`."""
    return st.lists(st.tuples(st.integers(0, span), st.integers(0, 255)), max_size=most)


def damage(data: bytes, flips: Sequence[tuple[int, int]], keep: int) -> bytes:
    """`data` as a file damaged in transit: bytes overwritten (positions wrap around its
    length), then cut after `keep` bytes (at least one)."""
    damaged = bytearray(data)
    for position, value in flips:
        damaged[position % len(damaged)] = value
    return bytes(damaged[: max(keep, 1)])


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (CRC fixed so only size is wrong)."""
    data = bytearray(png_bytes(np.zeros((32, 32), np.uint8)))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def noise(seed: int, side: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def broken_files() -> dict[str, tuple[bytes, str]]:
    """File name -> (content, FileProblem kind the data layer must report)."""
    truncated = png_bytes(noise(99))
    return {
        "truncated.png": (truncated[: len(truncated) // 2], "corrupt"),
        "empty.png": (b"", "empty"),
        "notes.png": (b"patient list, do not share\n", "not-image"),
        "no_pixels.dcm": (dicom_bytes(quadrants([0, 1, 2, 3]), with_pixels=False), "no-pixel-data"),
        "one_pixel.png": (png_bytes(np.zeros((1, 1), np.uint8)), "too-small"),
        "bomb.png": (bomb_png(100_000, 100_000), "too-large"),
    }


def write_clinic_folder(root: Path) -> tuple[set[str], dict[str, str]]:
    """`root/{normal,pneumonia}` with good files of every format, every kind of broken file,
    a duplicate and a folder with an unknown label ('pneumonai', for labels normal,pneumonia).

    Returns (good relative paths, broken relative path -> expected kind).
    """
    good = {
        "normal/a.png": png_bytes(noise(1)),
        "normal/b16.png": png_bytes(noise(2).astype(np.uint16) * 257),
        "normal/c.jpg": jpeg_bytes(np.stack([noise(3)] * 3, axis=-1)),
        "pneumonia/d.dcm": dicom_bytes(noise(4).astype(np.uint16) * 16, bits_stored=12),
        "pneumonia/e.dcm": dicom_bytes(
            noise(5).astype(np.uint16), photometric="MONOCHROME1", window=(128, 200)
        ),
        "pneumonia/f.png": png_bytes(noise(6)),
    }
    broken = {f"normal/{name}": item for name, item in broken_files().items()}
    broken["pneumonia/copy_of_a.png"] = (good["normal/a.png"], "duplicate")
    broken["pneumonai/g.png"] = (png_bytes(noise(7)), "unknown-label")
    for name, content in [*good.items(), *((n, c) for n, (c, _) in broken.items())]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return set(good), {name: kind for name, (_, kind) in broken.items()}


def assert_usable(image: np.ndarray, shape: tuple[int, ...] | None = None) -> None:
    """What every consumer of a decoded image relies on."""
    assert image.ndim == 2 and image.dtype == np.float32
    assert shape is None or image.shape == shape
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0


def assert_decodes_or_refuses(data: bytes, name: str) -> None:
    """Whatever the bytes, the decoder yields a usable image or raises ImageProblem."""
    try:
        image = decode_image_bytes(data, name)
    except ImageProblem:
        return
    assert_usable(image)
