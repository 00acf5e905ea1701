"""Radiograph files (DICOM, PNG, JPEG, anything Pillow reads) -> float32 [H, W] grey in [0, 1].

Sites hand us whatever their PACS exported, so every failure becomes an `ImageProblem` with a
reason a person can act on, and no input may exhaust memory: the pixel count declared in the
header is checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from hxr_model.data.problems import ImageProblem

# Largest real radiographs (43 x 43 cm at 0.1 mm) are about 20 MP; 64 MP leaves room for
# mammography-sized exports and stays below Pillow's own warning threshold (89 MP).
MAX_IMAGE_PIXELS = 64_000_000
MIN_IMAGE_SIDE = 32
DICOM_SUFFIXES = (".dcm", ".dicom")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image_bytes(data: bytes, name: str = "") -> np.ndarray:
    """Decode one file's bytes; `name` (its file name) only matters for DICOMs without preamble.

    Raises ImageProblem and nothing else: malformed files make third-party decoders raise almost
    anything (OSError, ValueError, SyntaxError, struct.error, ...), so the boundary is broad.
    """
    if not data:
        raise ImageProblem("empty", "empty file (0 bytes)")
    has_preamble = data[128:132] == b"DICM"
    try:
        if has_preamble or name.lower().endswith(DICOM_SUFFIXES):
            # pydicom warns about every non-conformant value (common in clinic exports), numpy
            # about overflowing rescales; whether usable grey levels come out is what matters,
            # and that becomes an ImageProblem if not.
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", UserWarning)
                return _decode_dicom(data, force=not has_preamble)
        return _decode_pillow(data)
    except ImageProblem:
        raise
    except Image.DecompressionBombError as error:
        raise ImageProblem(
            "too-large", f"decompression bomb refused before decoding: {error}"
        ) from None
    except Exception as error:
        raise ImageProblem("corrupt", f"corrupt or truncated image: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_geometry(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageProblem(
            "too-large",
            f"decompression bomb refused before decoding: header declares {width}x{height} = "
            f"{width * height / 1e6:.0f} MP, over the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit",
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageProblem(
            "too-small",
            f"image is {width}x{height}, below the minimum side of {MIN_IMAGE_SIDE} px",
        )


def _decode_pillow(data: bytes) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageProblem(
            "not-image", "not an image (content is not DICOM, PNG, JPEG or another image format)"
        ) from None
    _check_geometry(*image.size)
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _decode_dicom(data: bytes, force: bool) -> np.ndarray:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=force)
    except pydicom.errors.InvalidDicomError:
        raise ImageProblem("not-image", "not a DICOM file despite its .dcm name") from None
    if "PixelData" not in dataset:
        raise ImageProblem("no-pixel-data", "DICOM file has no pixel data")
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames < 1:
        raise ImageProblem("corrupt", f"DICOM header declares {frames} frames")
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    _check_geometry(columns, rows * frames)
    if frames != 1:
        raise ImageProblem("unsupported", f"multi-frame DICOM ({frames} frames), not a radiograph")
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise ImageProblem(
            "unsupported", f"colour DICOM ({dataset.PhotometricInterpretation}), not a radiograph"
        )
    pixels = dataset.pixel_array
    if pixels.shape != (rows, columns):
        raise ImageProblem(
            "corrupt",
            f"DICOM pixel data decodes to shape {list(pixels.shape)}, the header declares "
            f"{rows}x{columns}",
        )
    values = apply_modality_lut(pixels, dataset)
    if "VOILUTSequence" in dataset:
        # A VOI LUT is indexed by integer stored values; pydicom warns on float input.
        values = apply_voi_lut(np.rint(values).astype(np.int64), dataset)
        low, high = 0.0, 2.0 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2]) - 1
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        values = apply_windowing(values, dataset)
        low, high = apply_windowing(np.array([-np.inf, np.inf]), dataset)
    else:
        low, high = float(values.min()), float(values.max())
    grey = _rescale(np.asarray(values, dtype=np.float64), low, high)
    if not np.isfinite(grey).all():
        # NaN or infinite rescale slope, intercept or window: no grey level is meaningful.
        raise ImageProblem("corrupt", "DICOM rescale or window values give non-finite grey levels")
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        grey = 1.0 - grey
    return grey.astype(np.float32)


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map the display range [low, high] to [0, 1] (a constant image becomes black)."""
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)
