"""The ONNX Runtime latency study: both runtimes timed on one model whose outputs agree."""

import pytest

pytest.importorskip("onnxruntime", reason="ONNX Runtime is the optional extra `onnx`")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")

from experiments.onnx_latency import measure


def test_each_batch_gets_both_runtimes_and_their_ratio(tmp_path) -> None:
    rows = measure("hxr50", 32, {4: 1, 1: 2}, threads=1, folder=tmp_path)
    assert [row[:2] for row in rows] == [["hxr50", 4], ["hxr50", 1]]
    for _, _, torch_ms, ort_ms, ratio in rows:
        assert torch_ms > 0 and ort_ms > 0
        assert ratio == pytest.approx(ort_ms / torch_ms)
    assert (tmp_path / "hxr50.onnx").is_file()
