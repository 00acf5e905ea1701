"""`hxr export`: a checkpoint as one ONNX file for inference through ONNX Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from hxr_model.checkpoint import load_checkpoint
from hxr_model.onnx_model import TOLERANCE, export_onnx


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="write a checkpoint as an ONNX file (any batch size) for hxr predict --onnx",
        description="The export is checked: ONNX Runtime must reproduce PyTorch's outputs within "
        f"{TOLERANCE:g}, or nothing is written. Needs the onnx extra "
        "(pip install 'hybridnet-xr-federated[onnx]').",
    )
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, metavar="MODEL.onnx")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    gap = export_onnx(checkpoint, args.out)
    print(
        f"wrote {args.out} ({checkpoint.model_name}, {len(checkpoint.class_names)} classes, "
        f"{checkpoint.image_size} px); ONNX Runtime matches PyTorch within {gap:.1e}"
    )
    return 0
