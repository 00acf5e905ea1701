"""Inference latency of PyTorch (as `hxr bench` runs it: BatchNorm folded, channels-last) against
ONNX Runtime on the same exported model.

Each model is exported once with `hxr export`'s code (`hxr_model.onnx_model.export_onnx`); the two
runtimes then run the same random batch in turn, run by run, after two warm-up runs, and the
medians are reported with their ratio. Their probabilities are checked to agree within 1e-4
first.

    python -m experiments.onnx_latency --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hxr_model.benchmark import prepare_for_inference
from hxr_model.checkpoint import LoadedCheckpoint
from hxr_model.models import build_model
from hxr_model.onnx_model import export_onnx, load_onnx
from hxr_model.text_table import format_markdown_table

AGREEMENT = 1e-4


def _timed(run: Callable[[object], object], batch: object, times: list[float]) -> None:
    started = time.perf_counter()
    run(batch)
    times.append((time.perf_counter() - started) * 1000)


def measure(
    name: str, side: int, batches: dict[int, int], threads: int | None, folder: Path
) -> list[list[object]]:
    """Rows (model, batch, torch ms, ONNX Runtime ms, ratio) for one model."""
    torch.manual_seed(0)
    model = build_model(name, 2).eval()
    export_onnx(LoadedCheckpoint(model, name, ["a", "b"], side, None, {}), folder / f"{name}.onnx")
    exported = load_onnx(folder / f"{name}.onnx", threads=threads)
    fast = prepare_for_inference(model)
    rows = []
    for batch, runs in batches.items():
        images = torch.rand(batch, 1, side, side)
        array = images.numpy()
        with torch.inference_mode():
            gap = np.abs(exported.probabilities(array) - torch.softmax(fast(images), 1).numpy())
            if gap.max() > AGREEMENT:
                raise AssertionError(f"{name}: runtimes disagree by {gap.max():.1e}")
            times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
            for _ in range(2):
                fast(images), exported.probabilities(array)
            for _ in range(runs):
                _timed(fast, images, times["torch"])
                _timed(exported.probabilities, array, times["onnxruntime"])
        torch_ms, ort_ms = (statistics.median(times[key]) for key in ("torch", "onnxruntime"))
        rows.append([name, batch, torch_ms, ort_ms, ort_ms / torch_ms])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="hxr150,mobilenet_v2")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="both runtimes (default: theirs)")
    parser.add_argument(
        "--runs", type=int, default=7, help="timed runs at batch 32 (x4 at batch 1)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batches = {32: args.runs, 1: 4 * args.runs}
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            row
            for name in args.models.split(",")
            for row in measure(name, args.resolution, batches, args.threads, Path(folder))
        ]
    header = ["model", "batch", "PyTorch ms", "ONNX Runtime ms", "ONNX Runtime / PyTorch"]
    shown = [[name, batch, f"{t:.1f}", f"{o:.1f}", f"{r:.2f}"] for name, batch, t, o, r in rows]
    print(format_markdown_table(header, shown))


if __name__ == "__main__":
    main()
