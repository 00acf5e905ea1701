"""Received arrays are checked against what the round expects before a byte is decoded."""

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from protocol.arrays import ArrayMismatch, ArraySpec, decode_checked, specs_of, to_record

SENT = {
    "encoder.weight": np.full((2, 3), 0.5, dtype=np.float32),
    "head.bias": np.array([1.0, -1.0], dtype=np.float32),
}


def header_only(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A `.npy` header claiming `shape`, with none of the data: 128 bytes on the wire."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def replaced(name: str, array: Array) -> ArrayRecord:
    record = to_record(SENT)
    record[name] = array
    return record


def test_matching_arrays_decode_to_the_values_sent() -> None:
    decoded = decode_checked(to_record(SENT), specs_of(SENT))
    assert all(np.array_equal(decoded[name], SENT[name]) for name in SENT)


HUGE = (2**42,)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        # Metadata and header both claim 2**42 floats: refused without allocating anything.
        (
            replaced(
                "head.bias",
                Array(dtype="float32", shape=HUGE, stype="numpy.ndarray", data=header_only(HUGE)),
            ),
            "expected float32 (2,)",
        ),
        # Metadata agrees with the round, the header inside the bytes does not.
        (
            replaced(
                "head.bias",
                Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=header_only(HUGE)),
            ),
            "data holds float32 (4398046511104,)",
        ),
        # Right header, but the bytes stop short of the data it announces.
        (
            replaced(
                "head.bias",
                Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=header_only((2,))),
            ),
            "bytes, expected",
        ),
        (
            replaced(
                "head.bias",
                Array(dtype="float32", shape=(2,), stype="torch.Tensor", data=b"\x00" * 8),
            ),
            "serialised as 'torch.Tensor'",
        ),
        (replaced("head.bias", Array(np.array([1, -1], np.int64))), "is int64 (2,)"),
        (replaced("head.bias", Array(np.zeros(3, np.float32))), "expected float32 (2,)"),
        (replaced("head.extra", Array(np.zeros(2, np.float32))), "unexpected 1 array(s)"),
        (to_record({"encoder.weight": SENT["encoder.weight"]}), "missing 1 array(s)"),
    ],
)
def test_an_array_that_disagrees_with_the_round_is_refused_before_decoding(
    record: ArrayRecord, reason: str, monkeypatch
) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the checks")

    monkeypatch.setattr(np, "load", no_decoding)
    with pytest.raises(ArrayMismatch) as error:
        decode_checked(record, specs_of(SENT))
    assert reason in str(error.value)


def test_a_pickled_array_is_refused_by_its_dtype() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"payload": 1}] * 2, dtype=object), allow_pickle=True)
    pickled = Array(dtype="object", shape=(2,), stype="numpy.ndarray", data=buffer.getvalue())
    with pytest.raises(ArrayMismatch, match="is object"):
        decode_checked(replaced("head.bias", pickled), specs_of(SENT))


def test_a_spec_counts_the_bytes_of_its_data() -> None:
    assert ArraySpec(np.dtype(np.float32), (2, 3)).nbytes == 24
