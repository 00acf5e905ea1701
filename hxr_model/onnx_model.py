"""A checkpoint as one self-contained ONNX file, run through ONNX Runtime.

Clinic laptops often serve inference through ONNX Runtime rather than PyTorch. The file holds the
graph, the weights and, as ONNX metadata, what a prediction needs beside them (class names, input
size, decision threshold), so it is used on its own. The graph takes `[batch, 1, S, S]` float32
images in [0, 1] (any batch size) and returns the model's logits.

onnx, onnxscript (torch's exporter) and onnxruntime are the optional `onnx` extra; they are
imported only when used, and a missing one is a one-line error saying how to install it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hxr_model.atomic_files import write_atomic
from hxr_model.checkpoint import LoadedCheckpoint
from hxr_model.errors import CheckpointError, ConfigError, describe_validation_error

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 18
# ONNX Runtime must reproduce PyTorch's logits this closely, or the export is refused.
TOLERANCE = 1e-4
# Batch sizes of the export trace and of the check: different, so a fixed batch axis shows.
TRACE_BATCH, CHECK_BATCH = 2, 3
METADATA_KEY = "hybridnet-xr"
INT64, DOUBLE = 7, 11  # ONNX TensorProto element types
INSTALL_HINT = "pip install 'hybridnet-xr-federated[onnx]'"


class OnnxMetadata(BaseModel):
    """What `hxr predict` reads from an exported file besides the graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str
    class_names: list[str] = Field(min_length=2)
    image_size: int = Field(ge=1)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


def _optional(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed: {INSTALL_HINT}") from None


def export_onnx(checkpoint: LoadedCheckpoint, path: Path, seed: int = 0) -> float:
    """Write the checkpoint's model to `path` (atomically) and return the largest gap between
    ONNX Runtime's and PyTorch's logits on a random batch; above TOLERANCE nothing is written."""
    _optional("onnxruntime")
    model = checkpoint.model.to("cpu").eval()
    side = checkpoint.image_size
    generator = torch.Generator().manual_seed(seed)
    trace = torch.rand(TRACE_BATCH, 1, side, side, generator=generator)
    translations = _translations()
    try:
        program = torch.onnx.export(
            model,
            (trace,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
            custom_translation_table=translations,
        )
    except Exception as error:  # torch's report runs to pages; its first line names the step
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{checkpoint.model_name}: torch's ONNX exporter failed ({reason})"
        ) from error
    metadata = OnnxMetadata(
        model_name=checkpoint.model_name,
        class_names=checkpoint.class_names,
        image_size=side,
        threshold=checkpoint.threshold,
    )
    program.model.metadata_props[METADATA_KEY] = metadata.model_dump_json()
    content = program.model_proto.SerializeToString()
    check = torch.rand(CHECK_BATCH, 1, side, side, generator=generator)
    with torch.inference_mode():
        expected = model(check).numpy()
    session = _session(content, threads=1)
    gap = float(np.abs(session.run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0] - expected).max())
    if not gap <= TOLERANCE:
        raise CheckpointError(
            f"ONNX Runtime's outputs differ from PyTorch's by {gap:.2e} (> {TOLERANCE:.0e}); "
            f"{path} was not written"
        )
    write_atomic(Path(path), lambda handle: handle.write(content))
    return gap


def _translations() -> dict[Any, Any]:
    """ONNX versions of torch ops that torch's exporter translates too slowly.

    `torch.quantile` (the per-image window of intensity standardisation) becomes a full sort of
    every row: at 224 px that TopK over 50,176 pixels took ONNX Runtime about 7.5 ms per image,
    more than the rest of HXR-150. Here the order statistics come from two partial sorts (TopK of
    the smallest values for ranks in the lower half, of the largest for the upper half: a 1 % /
    99 % window sorts 2 % of the pixels), about 10x less. The interpolation is torch's own (ranks
    in double precision, then `lerp`: from below under weight 0.5, from above otherwise), so the
    values are torch's to within a float32 step (torch's vectorised lerp fuses the multiply-add;
    ONNX has no fused form).
    """
    op = _optional("onnxscript").opset18

    def quantile(
        values: Any,
        q: Any,
        dim: int | None = None,
        keepdim: bool = False,
        interpolation: str = "linear",
    ) -> Any:
        rank = len(values.shape)
        if dim is None or interpolation != "linear":
            raise NotImplementedError("ONNX quantile needs a dim and linear interpolation")
        dim %= rank
        # Scalars, so the ranks take q's shape and a scalar q gathers without keeping the axis.
        one_int = op.Constant(value_int=1)
        last = op.Squeeze(op.Sub(op.Shape(values, start=dim, end=dim + 1), one_int))
        middle = op.Div(last, op.Constant(value_int=2))
        ranks = op.Mul(op.Cast(q, to=DOUBLE), op.Cast(last, to=DOUBLE))
        below, above = op.Floor(ranks), op.Ceil(ranks)
        needed = op.Concat(
            op.Reshape(op.Cast(below, to=INT64), op.Constant(value_ints=[-1])),
            op.Reshape(op.Cast(above, to=INT64), op.Constant(value_ints=[-1])),
            axis=0,
        )
        in_lower = op.LessOrEqual(needed, middle)
        smallest_k = op.ReduceMax(op.Where(in_lower, op.Add(needed, one_int), one_int), keepdims=0)
        beyond = op.Sub(last, op.Sub(needed, one_int))  # values from position j to the top
        largest_k = op.ReduceMax(op.Where(in_lower, one_int, beyond), keepdims=0)
        as_k = op.Constant(value_ints=[1])  # TopK takes k as a 1-element tensor
        smallest, _ = op.TopK(values, op.Reshape(smallest_k, as_k), axis=dim, largest=0)
        largest, _ = op.TopK(values, op.Reshape(largest_k, as_k), axis=dim, largest=1)
        # The lower-half test, shaped to broadcast along `dim` where the quantiles land.
        trailing = [1] * (rank - 1 - dim) if len(q.shape) == 1 else []
        layout = op.Constant(value_ints=[-1, *trailing]) if len(q.shape) == 1 else None

        def order_statistic(position: Any) -> Any:
            index = op.Cast(position, to=INT64)
            from_smallest = op.Gather(
                smallest, op.Min(index, op.Sub(smallest_k, one_int)), axis=dim
            )
            from_largest = op.Gather(
                largest, op.Min(op.Sub(last, index), op.Sub(largest_k, one_int)), axis=dim
            )
            lower = op.LessOrEqual(index, middle)
            lower = lower if layout is None else op.Reshape(lower, layout)
            return op.Where(lower, from_smallest, from_largest)

        low, high = order_statistic(below), order_statistic(above)
        weight = op.CastLike(op.Sub(ranks, below), values)
        weight = weight if layout is None else op.Reshape(weight, layout)
        span = op.Sub(high, low)
        one, half = (op.CastLike(op.Constant(value_float=v), values) for v in (1.0, 0.5))
        result = op.Where(
            op.Less(weight, half),
            op.Add(low, op.Mul(weight, span)),
            op.Sub(high, op.Mul(span, op.Sub(one, weight))),
        )
        if len(q.shape) == 1:  # torch puts the quantiles first
            result = op.Transpose(result, perm=[dim, *(i for i in range(rank) if i != dim)])
            dim += 1
        return op.Unsqueeze(result, op.Constant(value_ints=[dim])) if keepdim else result

    return {torch.ops.aten.quantile.default: quantile}


def _session(model: bytes | str, threads: int | None) -> Any:
    """An ONNX Runtime CPU session; `threads` caps its intra-op pool (None: ONNX Runtime's
    default, one thread per physical core)."""
    onnxruntime = _optional("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@dataclass
class OnnxClassifier:
    """An exported model, ready to score images."""

    session: Any
    model_name: str
    class_names: list[str]
    image_size: int
    threshold: float | None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax outputs [N, C] for float images [N, 1, S, S] in [0, 1]."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)


def load_onnx(path: Path, threads: int | None = None) -> OnnxClassifier:
    """Open a file `export_onnx` wrote; any problem is one CheckpointError line naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    _optional("onnxruntime")
    try:
        session = _session(str(path), threads)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable ONNX model ({reason})") from None
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no {METADATA_KEY!r} metadata (write it with hxr export)")
    try:
        metadata = OnnxMetadata.model_validate_json(raw)
    except ValidationError as error:
        raise CheckpointError(f"{path}: metadata: {describe_validation_error(error)}") from None
    outputs = session.get_outputs()[0].shape[-1]
    if outputs != len(metadata.class_names):
        raise CheckpointError(
            f"{path}: the graph gives {outputs} outputs for {len(metadata.class_names)} classes"
        )
    return OnnxClassifier(session=session, **metadata.model_dump())
