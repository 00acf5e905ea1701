"""`hxr train`, `hxr evaluate`, `hxr predict`: centralized work on one machine's data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar, get_args

import numpy as np
import torch

from hxr_cli.data_commands import add_reading_arguments, load_data
from hxr_model.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from hxr_model.data import DataSplits, RadiographDataset
from hxr_model.data.cache import default_cache_dir
from hxr_model.data.decoding import decode_image_bytes
from hxr_model.data.refs import default_image_size
from hxr_model.data.resizing import to_square
from hxr_model.distill import DistillConfig
from hxr_model.errors import DataError, HXRError
from hxr_model.gradcam import gradcam, save_overlay_png
from hxr_model.metrics import predict as predict_classes
from hxr_model.models import model_names
from hxr_model.prewarm import PrewarmConfig
from hxr_model.recipe import fit
from hxr_model.runtime import resolve_device
from hxr_model.text_table import format_table
from hxr_model.training import Imbalance, Monitor, TrainConfig, evaluate_classifier
from hxr_model.training_loop import LoopConfig

DEFAULT_DATA = "synthetic:1200"
# Options that set one value for every phase of `hxr train` (pre-warming, teacher, student).
RUN_OPTIONS = ("seed", "device", "max_memory_mb", "progress")

PhaseConfig = TypeVar("PhaseConfig", bound=LoopConfig)


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="pre-warm (optional) and fine-tune a model on one dataset"
    )
    add_data_arguments(train, default=DEFAULT_DATA)
    train.add_argument("--model", default="hxr150", choices=model_names())
    train.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="images are resized to S x S (default: a MedMNIST file's own size, else 64)",
    )
    train.add_argument("--prewarm-epochs", type=int, default=0, help="SimCLR epochs first")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument(
        "--lr", dest="learning_rate", type=float, default=2e-3, help="fine-tuning learning rate"
    )
    train.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    train.add_argument("--schedule", default="cosine", choices=["cosine", "onecycle", "constant"])
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument(
        "--imbalance",
        default="none",
        choices=get_args(Imbalance),
    )
    train.add_argument(
        "--monitor",
        default="balanced_accuracy",
        choices=get_args(Monitor),
        help="validation metric that picks the kept epoch and drives early stopping",
    )
    train.add_argument(
        "--early-stopping",
        dest="early_stopping_patience",
        type=int,
        default=None,
        metavar="PATIENCE",
    )
    train.add_argument("--prewarm-batch-size", type=int, default=256)
    train.add_argument("--prewarm-lr", dest="prewarm_learning_rate", type=float, default=2e-3)
    train.add_argument(
        "--temperature",
        dest="prewarm_temperature",
        type=float,
        default=0.2,
        help="NT-Xent temperature",
    )
    train.add_argument(
        "--distill-from",
        default=None,
        choices=model_names(),
        metavar="TEACHER",
        help="train TEACHER first, then distil it into --model (teacher-led baseline)",
    )
    train.add_argument("--max-memory-mb", type=float, default=None)
    train.add_argument("--device", default="auto", type=parse_device, help="auto, cpu or cuda")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--no-progress", dest="progress", action="store_false")
    train.add_argument("--out", type=Path, required=True, help="folder for model.pt, metrics.json")
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser("evaluate", help="metrics of a checkpoint on a data split")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    add_data_arguments(evaluate, default=None)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument(
        "--seed", type=int, default=None, help="split seed (default: the one used in training)"
    )
    evaluate.set_defaults(resize=None)
    evaluate.add_argument("--device", default="auto", type=parse_device)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=run_evaluate)

    predict = subparsers.add_parser("predict", help="classify image files with a checkpoint")
    predict.add_argument("--checkpoint", type=Path, required=True)
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--gradcam", type=Path, default=None, metavar="OUTDIR")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.set_defaults(handler=run_predict)


def parse_device(text: str) -> str:
    """Refuse a device torch does not know, or CUDA on a machine without it, before any data
    is read; training would otherwise fail after minutes with torch's own error."""
    try:
        resolve_device(text)
    except (ValueError, RuntimeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_data_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--data",
        default=default,
        required=default is None,
        help="data reference: medmnist:PATH.npz, csv:FILE, folder:DIR, synthetic[:N[:SITES]]",
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip broken files, counting them")
    add_reading_arguments(parser)


def phase_config(
    config_type: type[PhaseConfig], args: argparse.Namespace, prefix: str = ""
) -> PhaseConfig:
    """A training phase's config from the options named after its fields: the phase's own
    options carry `prefix` (`--prewarm-lr` sets the pre-warming `learning_rate`), the run-wide
    ones (`RUN_OPTIONS`) do not. Fields without an option keep their defaults."""
    values: dict[str, object] = {}
    for field in config_type.model_fields:
        option = field if field in RUN_OPTIONS else prefix + field
        if hasattr(args, option):
            values[field] = getattr(args, option)
    return config_type(**values)


def run_train(args: argparse.Namespace) -> int:
    image_size = args.image_size or default_image_size(args.data, default_cache_dir())
    splits = load_data(args, image_size)
    class_names = splits.class_names
    train_config = phase_config(TrainConfig, args)
    prewarm_config = phase_config(PrewarmConfig, args, prefix="prewarm_")
    distill_config = None if args.distill_from is None else DistillConfig(teacher=args.distill_from)
    outcome = fit(args.model, splits, train_config, prewarm_config, distill_config)
    model, result = outcome.model, outcome.result
    report = {
        "data": args.data,
        "image_size": image_size,
        # Over all phases, so runs with and without pre-warming or a teacher compare directly.
        "peak_memory_mb": outcome.peak_memory_mb,
        "seconds": outcome.seconds,
        **outcome.report,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        args.out / "model.pt",
        model,
        model_name=args.model,
        class_names=class_names,
        image_size=image_size,
        threshold=result.threshold,
        metadata={
            **{key: report[key] for key in ("data", "train_images", "skipped_files")},
            # How the data was read and split, so `hxr evaluate` sees the same test images.
            "split_seed": args.seed,
            "resize": args.resize,
            "label_map": args.labels,
        },
    )
    (args.out / "metrics.json").write_text(json.dumps(report, indent=2))
    print(describe_validation(result.val_metrics))
    print(f"wrote {args.out / 'model.pt'} and {args.out / 'metrics.json'}")
    return 0


def describe_validation(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "no validation split: nothing to report"
    auc = metrics.get("auc")
    return (
        f"validation: accuracy {metrics['accuracy']:.4f}  balanced accuracy "
        f"{metrics['balanced_accuracy']:.4f}  AUC {'n/a' if auc is None else f'{auc:.4f}'}"
        f"  (n={metrics['n']})"
    )


def pick_split(splits: DataSplits, name: str, ref: str) -> RadiographDataset:
    dataset = getattr(splits, name)
    if dataset is None or len(dataset) == 0:
        available = [s for s in ("train", "val", "test") if getattr(splits, s)]
        raise DataError(f"{ref} has no {name!r} split (available: {', '.join(available)})")
    return dataset


def run_evaluate(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    trained_with = checkpoint.metadata
    args.seed = trained_with.get("split_seed", 0) if args.seed is None else args.seed
    args.resize = args.resize or trained_with.get("resize", "pad")
    args.labels = args.labels or trained_with.get("label_map")
    splits = load_data(args, checkpoint.image_size)
    if splits.class_names != checkpoint.class_names:
        raise DataError(
            f"{args.data} has classes {splits.class_names} but {args.checkpoint} was trained on "
            f"{checkpoint.class_names}"
        )
    dataset = pick_split(splits, args.split, args.data)
    metrics = evaluate_classifier(
        checkpoint.model, dataset, device=args.device, threshold=checkpoint.threshold
    )
    metrics["skipped_files"] = len(splits.skipped)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(describe_validation(metrics).replace("validation", args.split, 1))
        print("confusion matrix (rows: true class, columns: predicted class):")
        names = checkpoint.class_names
        rows = [[name, *row] for name, row in zip(names, metrics["confusion_matrix"], strict=True)]
        print(format_table(["", *names], rows))
    return 0


def read_image(path: Path, checkpoint: LoadedCheckpoint) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        image = decode_image_bytes(path.read_bytes(), path.name)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    return to_square(image, checkpoint.image_size)


def run_predict(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    model = checkpoint.model.eval()
    failures = 0
    for path in args.images:
        try:
            image = read_image(path, checkpoint)
        except HXRError as error:
            print(f"hxr: error: {error}", file=sys.stderr)
            failures += 1
            continue
        batch = torch.from_numpy(image).float().div(255).view(1, 1, *image.shape)
        with torch.inference_mode():
            probabilities = torch.softmax(model(batch), dim=1)[0].numpy()
        # Binary models decide with the validation-chosen threshold stored with them.
        threshold = 0.5 if checkpoint.threshold is None else checkpoint.threshold
        predicted = int(predict_classes(probabilities[None], threshold)[0])
        result = {
            "image": str(path),
            "class": checkpoint.class_names[predicted],
            "probabilities": dict(
                zip(checkpoint.class_names, map(float, probabilities), strict=True)
            ),
        }
        if args.gradcam is not None:
            heatmap = gradcam(model, batch, [predicted])[0]
            overlay = args.gradcam / f"{path.stem}_gradcam.png"
            save_overlay_png(overlay, image, heatmap)
            result["gradcam"] = str(overlay)
        if args.json:
            print(json.dumps(result))
        else:
            shown = "  ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
            print(f"{path}: {result['class']}  ({shown})")
    return 1 if failures else 0
