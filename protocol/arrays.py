"""Numpy state <-> Flower ArrayRecords, and the checks a received array passes before decoding.

A received array is untrusted bytes. Its `.npy` header can claim any shape (128 bytes claiming
2**42 floats), its serialisation type may not be numpy at all, and decoding first would let one
reply exhaust the coordinator's memory. `decode_checked` compares name, serialisation type,
dtype, shape and byte length with what the round expects, reading only the header, and decodes
nothing until all of them agree.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

NUMPY_STYPE = "numpy.ndarray"


class ArrayMismatch(ValueError):
    """A received array is not what the round expects; the message names it and says why."""


@dataclass(frozen=True)
class ArraySpec:
    """What one expected array must be: its dtype and shape."""

    dtype: np.dtype
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: np.ndarray) -> ArraySpec:
        return cls(array.dtype, tuple(array.shape))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def specs_of(state: Mapping[str, np.ndarray]) -> dict[str, ArraySpec]:
    return {name: ArraySpec.of(array) for name, array in state.items()}


def to_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(array)) for name, array in state.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Decode a record this process built or already checked (see `decode_checked`)."""
    return {name: array.numpy() for name, array in record.items()}


def _header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, header length) from the `.npy` header alone."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read(stream)
    except (ValueError, SyntaxError, TypeError, OverflowError) as error:
        raise ArrayMismatch(f"unreadable .npy header ({error})") from None
    return tuple(shape), bool(fortran_order), dtype, stream.tell()


def check_array(name: str, array: Array, spec: ArraySpec) -> None:
    """Raise ArrayMismatch unless `array` is exactly `spec`, serialised by numpy, without pickle."""
    if array.stype != NUMPY_STYPE:
        raise ArrayMismatch(f"'{name}' is serialised as {array.stype!r}, expected {NUMPY_STYPE}")
    if array.dtype != spec.dtype.name or tuple(array.shape) != spec.shape:
        raise ArrayMismatch(
            f"'{name}' is {array.dtype} {tuple(array.shape)}, expected {spec.dtype.name} "
            f"{spec.shape}"
        )
    shape, fortran_order, dtype, header_length = _header(array.data)
    if dtype != spec.dtype or shape != spec.shape or fortran_order:
        raise ArrayMismatch(
            f"'{name}' data holds {dtype} {shape}, expected {spec.dtype.name} {spec.shape}"
        )
    if len(array.data) != header_length + spec.nbytes:
        raise ArrayMismatch(
            f"'{name}' has {len(array.data)} bytes, expected {header_length + spec.nbytes}"
        )


def decode_checked(record: ArrayRecord, expected: Mapping[str, ArraySpec]) -> dict[str, np.ndarray]:
    """The record's arrays, decoded only after every one matches `expected` (same names too)."""
    missing = sorted(set(expected) - set(record))
    if missing:
        raise ArrayMismatch(f"missing {len(missing)} array(s), e.g. '{missing[0]}'")
    extra = sorted(set(record) - set(expected))
    if extra:
        raise ArrayMismatch(f"unexpected {len(extra)} array(s), e.g. '{extra[0]}'")
    for name, spec in expected.items():
        check_array(name, record[name], spec)
    return {name: np.load(io.BytesIO(record[name].data), allow_pickle=False) for name in expected}
