"""ONNX export of tiny models: ONNX Runtime must give PyTorch's outputs, at any batch size."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hxr_model.checkpoint import load_checkpoint, save_checkpoint
from hxr_model.errors import CheckpointError, ConfigError
from hxr_model.models import build_model

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the onnx extra)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (the onnx extra)")

from hxr_model.onnx_model import (
    INPUT_NAME,
    OPSET,
    TOLERANCE,
    _translations,
    export_onnx,
    load_onnx,
)


def checkpoint_file(path: Path, classes: list[str], threshold: float | None = None) -> Path:
    torch.manual_seed(0)
    model = build_model("hxr50", len(classes))
    save_checkpoint(
        path, model, model_name="hxr50", class_names=classes, image_size=32, threshold=threshold
    )
    return path


def test_onnx_runtime_gives_pytorchs_probabilities_at_any_batch_size(tmp_path) -> None:
    classes = ["normal", "covid", "tuberculosis"]
    checkpoint = load_checkpoint(checkpoint_file(tmp_path / "model.pt", classes))
    gap = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert 0 <= gap <= TOLERANCE

    exported = load_onnx(tmp_path / "model.onnx", threads=1)
    assert (exported.class_names, exported.image_size, exported.threshold) == (classes, 32, None)
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        images = rng.uniform(0, 1, (batch, 1, 32, 32)).astype(np.float32)
        with torch.inference_mode():
            expected = torch.softmax(checkpoint.model(torch.from_numpy(images)), dim=1).numpy()
        assert exported.probabilities(images).shape == (batch, 3)
        np.testing.assert_allclose(exported.probabilities(images), expected, atol=TOLERANCE)


def test_binary_threshold_travels_with_the_onnx_file(tmp_path) -> None:
    checkpoint = load_checkpoint(checkpoint_file(tmp_path / "m.pt", ["neg", "pos"], 0.37))
    export_onnx(checkpoint, tmp_path / "m.onnx")
    assert load_onnx(tmp_path / "m.onnx").threshold == 0.37


class Quantiles(torch.nn.Module):
    """torch.quantile in the forms the translation covers."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = torch.tensor([0.01, 0.37, 0.5, 0.99])
        return (
            torch.quantile(x, levels, dim=1, keepdim=True),
            torch.quantile(x, levels, dim=-1),
            torch.quantile(x, levels, dim=0),
            torch.quantile(x, torch.tensor(0.25), dim=0, keepdim=True),
            torch.quantile(x, torch.tensor(0.9), dim=1),
        )


def test_quantile_translation_matches_torch_to_float_precision(tmp_path) -> None:
    import onnxruntime

    x = torch.rand(3, 101)
    program = torch.onnx.export(
        Quantiles().eval(),
        (x,),
        input_names=["x"],
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
        custom_translation_table=_translations(),
    )
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString())
    fresh = torch.rand(3, 101)  # other values than the trace saw
    for got, expected in zip(
        session.run(None, {"x": fresh.numpy()}), Quantiles()(fresh), strict=True
    ):
        assert got.shape == tuple(expected.shape)
        # Within one float32 step of values in [0, 1]: torch's vectorised lerp fuses mul-add.
        np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=2**-23)


def test_a_foreign_or_broken_file_is_one_line(tmp_path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00not onnx")
    with pytest.raises(CheckpointError, match=r"broken\.onnx: not a readable ONNX model"):
        load_onnx(broken)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(
        torch.nn.Linear(2, 2).eval(), (torch.rand(1, 2),), foreign, dynamo=True, external_data=False
    )
    with pytest.raises(CheckpointError, match="write it with hxr export"):
        load_onnx(foreign)
    with pytest.raises(CheckpointError, match="no such ONNX file"):
        load_onnx(tmp_path / "absent.onnx")


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch) -> None:
    checkpoint = load_checkpoint(checkpoint_file(tmp_path / "m.pt", ["neg", "pos"]))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails
    with pytest.raises(ConfigError, match=r"onnxruntime is not installed: pip install .*\[onnx\]"):
        export_onnx(checkpoint, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ConfigError, match="onnxruntime is not installed"):
        load_onnx(tmp_path / "m.pt")


def test_image_input_is_named_for_other_onnx_users(tmp_path) -> None:
    import onnx

    checkpoint = load_checkpoint(checkpoint_file(tmp_path / "m.pt", ["neg", "pos"]))
    export_onnx(checkpoint, tmp_path / "m.onnx")
    graph = onnx.load(tmp_path / "m.onnx").graph
    (image,) = graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == INPUT_NAME
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 32, 32]


def test_quantile_sorts_only_the_tails_it_needs() -> None:
    """A 1 % / 99 % window of 1000 values needs the 11 smallest and the 11 largest: a full sort
    (torch's own translation) made the standardisation most of HXR-150's ONNX Runtime time."""
    from onnx import numpy_helper

    class Window(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.quantile(x, torch.tensor([0.01, 0.99]), dim=1, keepdim=True)

    program = torch.onnx.export(
        Window().eval(),
        (torch.rand(2, 1000),),
        dynamo=True,
        verbose=False,
        custom_translation_table=_translations(),
    )
    graph = program.model_proto.graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    constants |= {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant"
    }
    sizes = [constants[node.input[1]].tolist() for node in graph.node if node.op_type == "TopK"]
    assert sizes == [[11], [11]]


def test_an_exporter_failure_is_one_line_and_writes_nothing(tmp_path, monkeypatch) -> None:
    checkpoint = load_checkpoint(checkpoint_file(tmp_path / "m.pt", ["neg", "pos"]))

    def failing_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("No ONNX function found for aten.something\n\n## pages of report")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(CheckpointError) as refused:
        export_onnx(checkpoint, tmp_path / "m.onnx")
    assert str(refused.value) == (
        "hxr50: torch's ONNX exporter failed (No ONNX function found for aten.something)"
    )
    assert not (tmp_path / "m.onnx").exists()
