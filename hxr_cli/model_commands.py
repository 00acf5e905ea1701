"""`hxr train`, `hxr evaluate`, `hxr predict`: centralized work on one machine's data."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar, get_args

import numpy as np
import torch

from hxr_cli.data_commands import add_reading_arguments, load_data
from hxr_model.checkpoint import load_checkpoint, save_checkpoint
from hxr_model.data import DataSplits, RadiographDataset
from hxr_model.data.cache import default_cache_dir
from hxr_model.data.decoding import decode_image_bytes
from hxr_model.data.refs import DEFAULT_IMAGE_SIZE, FILE_IMAGE_SIZE, default_image_size
from hxr_model.data.resizing import to_square
from hxr_model.distill import DistillConfig
from hxr_model.errors import ConfigError, DataError, HXRError
from hxr_model.gradcam import gradcam, save_overlay_png
from hxr_model.metrics import classification_metrics, model_class_indices
from hxr_model.metrics import predict as predict_classes
from hxr_model.models import RadiographClassifier, model_names
from hxr_model.onnx_model import load_onnx
from hxr_model.prewarm import PrewarmConfig
from hxr_model.recipe import QUICK_RECIPE, RADIOGRAPH_FILE_RECIPE, Recipe, default_recipe, fit
from hxr_model.runtime import resolve_device
from hxr_model.text_table import format_table
from hxr_model.training import Imbalance, Monitor, TrainConfig, predict_probabilities
from hxr_model.training_loop import LoopConfig

DEFAULT_DATA = "synthetic:1200"
# Options that set one value for every phase of `hxr train` (pre-warming, teacher, student).
RUN_OPTIONS = ("seed", "device", "max_memory_mb", "progress")
# Options whose default is the data's recipe (`hxr_model.recipe.Recipe`), and the value that
# lifts a recipe's memory budget.
RECIPE_FIELDS = tuple(field for field in Recipe.model_fields if field != "name")
NO_BUDGET = "none"

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
        help="images are resized to S x S (default: a MedMNIST file's own size, "
        f"{FILE_IMAGE_SIZE} for folders and manifests, {DEFAULT_IMAGE_SIZE} for phantoms)",
    )
    train.add_argument(
        "--prewarm-epochs",
        type=int,
        default=None,
        help=f"SimCLR epochs first {recipe_default('prewarm_epochs')}",
    )
    train.add_argument("--epochs", type=int, default=None, help=recipe_default("epochs"))
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument(
        "--lr", dest="learning_rate", type=float, default=2e-3, help="fine-tuning learning rate"
    )
    train.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    train.add_argument("--schedule", default="cosine", choices=["cosine", "onecycle", "constant"])
    train.add_argument("--label-smoothing", type=float, default=0.0)
    train.add_argument(
        "--imbalance",
        default=None,
        choices=get_args(Imbalance),
        help=recipe_default("imbalance"),
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
    train.add_argument(
        "--prewarm-batch-size",
        type=int,
        default=None,
        help=f"image pairs in one contrastive loss {recipe_default('prewarm_batch_size')}",
    )
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
    train.add_argument(
        "--max-memory-mb",
        type=parse_memory_budget,
        default=None,
        help=f"memory budget of every phase in MB, or none {recipe_default('max_memory_mb')}",
    )
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

    predict = subparsers.add_parser(
        "predict", help="classify image files with a checkpoint or an exported ONNX file"
    )
    model = predict.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="a model.pt, run with PyTorch")
    model.add_argument(
        "--onnx",
        type=Path,
        metavar="MODEL.onnx",
        help="an `hxr export` file, run with ONNX Runtime (the onnx extra)",
    )
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    predict.add_argument("--gradcam", type=Path, default=None, metavar="OUTDIR")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.set_defaults(handler=run_predict)


def recipe_default(field: str) -> str:
    """Help text naming what each recipe sets for `field` (`hxr_model.recipe`)."""

    files, other = (
        shown(getattr(recipe, field)) for recipe in (RADIOGRAPH_FILE_RECIPE, QUICK_RECIPE)
    )
    return f"(default: {files} for radiograph files, {other} otherwise)"


def shown(value: object) -> str:
    """A schedule value as the command line writes it."""
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def parse_memory_budget(text: str) -> float | str:
    """Megabytes, or 'none': no budget, even where the data's recipe sets one."""
    if text == NO_BUDGET:
        return text
    try:
        budget = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of MB nor 'none'") from None
    if not budget > 0:
        raise argparse.ArgumentTypeError(f"a memory budget must be positive, not {text}")
    return budget


def apply_recipe(args: argparse.Namespace) -> Recipe:
    """Fill the schedule options the user left unset from the data's recipe, and return it."""
    recipe = default_recipe(args.data)
    for field in RECIPE_FIELDS:
        if getattr(args, field) is None:
            setattr(args, field, getattr(recipe, field))
    if args.max_memory_mb == NO_BUDGET:
        args.max_memory_mb = None
    return recipe


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
    recipe = apply_recipe(args)
    schedule = {field: getattr(args, field) for field in RECIPE_FIELDS}
    print(
        f"schedule ({recipe.name} recipe where no option is given): "
        + ", ".join(
            f"{field.replace('_', '-')} {shown(value)}" for field, value in schedule.items()
        )
    )
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
        # The recipe the unset options came from, and the schedule that ran.
        "recipe": recipe.name,
        "schedule": schedule,
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
    # A clinic may hold any of the model's classes (matched by name); an unknown one is refused
    # before a single image is scored.
    try:
        to_model_class = model_class_indices(splits.class_names, checkpoint.class_names)
    except DataError as error:
        raise DataError(f"{args.data}: {error}") from None
    dataset = pick_split(splits, args.split, args.data)
    labels, probabilities = predict_probabilities(checkpoint.model, dataset, device=args.device)
    labels = to_model_class[labels]
    metrics = classification_metrics(
        labels, probabilities, checkpoint.class_names, checkpoint.threshold
    )
    metrics["skipped_files"] = len(splits.skipped)
    # Data joined from several hospitals is also scored per source: a pooled figure can hide
    # the one hospital where the model fails.
    sources = sorted({source for source in dataset.sources if source is not None})
    if len(sources) > 1:
        of_source = np.array(dataset.sources, dtype=object)
        metrics["by_source"] = {
            source: classification_metrics(
                labels[of_source == source],
                probabilities[of_source == source],
                checkpoint.class_names,
                checkpoint.threshold,
            )
            for source in sources
        }
    if args.json:
        print(json.dumps(metrics))
    else:
        print(describe_evaluation(metrics, args.split))
    return 0


PER_CLASS_FIGURES = ("recall", "precision", "f1", "auc")


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def describe_evaluation(metrics: dict[str, Any], split: str) -> str:
    """The headline, a per-class table and the confusion matrix of the classes present; values
    the data leave undefined read n/a, never NaN."""
    names = list(metrics["per_class"])
    present = metrics["classes_present"]
    lines = [describe_validation(metrics).replace("validation", split, 1)]
    if len(present) < len(names):
        lines.append(
            f"classes present: {', '.join(present)} ({len(present)} of the model's "
            f"{len(names)}; averages run over these)"
        )
    rows = [
        [name, entry["support"], *(_figure(entry[key]) for key in PER_CLASS_FIGURES)]
        for name, entry in metrics["per_class"].items()
    ]
    lines.append(format_table(["", "images", "recall", "precision", "F1", "AUC"], rows))
    if metrics["undefined"]:
        lines.append(
            "n/a: undefined on these images (recall, F1, AUC need images of the class, AUC "
            "of another class too, precision a prediction of it)"
        )
    lines.append("confusion matrix (rows: true class, columns: predicted class):")
    matrix = [
        [name, *row]
        for name, row in zip(names, metrics["confusion_matrix"], strict=True)
        if name in present
    ]
    lines.append(format_table(["", *names], matrix))
    if "by_source" in metrics:
        lines.append("by source:")
        rows = [
            [source, part["n"], _figure(part["accuracy"]), _figure(part["balanced_accuracy"])]
            for source, part in metrics["by_source"].items()
        ]
        lines.append(format_table(["", "images", "accuracy", "balanced accuracy"], rows))
    return "\n".join(lines)


class Classifier(Protocol):
    """What `hxr predict` needs of a model, from a checkpoint or an exported ONNX file."""

    class_names: list[str]
    image_size: int
    threshold: float | None


def read_image(path: Path, image_size: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        image = decode_image_bytes(path.read_bytes(), path.name)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    return to_square(image, image_size)


def torch_probabilities(model: RadiographClassifier, images: np.ndarray) -> np.ndarray:
    """Softmax outputs [N, C] of a PyTorch model for float images [N, 1, S, S] in [0, 1]."""
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(images)), dim=1).numpy()


def run_predict(args: argparse.Namespace) -> int:
    classifier: Classifier
    model: RadiographClassifier | None = None
    if args.onnx is not None:
        if args.gradcam is not None:
            raise ConfigError("--gradcam needs the PyTorch model: use --checkpoint, not --onnx")
        exported = load_onnx(args.onnx)
        classifier, probabilities_of = exported, exported.probabilities
    else:
        checkpoint = load_checkpoint(args.checkpoint)
        model = checkpoint.model.eval()
        classifier, probabilities_of = checkpoint, partial(torch_probabilities, model)
    failures = 0
    for path in args.images:
        try:
            image = read_image(path, classifier.image_size)
        except HXRError as error:
            print(f"hxr: error: {error}", file=sys.stderr)
            failures += 1
            continue
        pixels = (image.astype(np.float32) / 255).reshape(1, 1, *image.shape)
        probabilities = probabilities_of(pixels)[0]
        # Binary models decide with the validation-chosen threshold stored with them.
        threshold = 0.5 if classifier.threshold is None else classifier.threshold
        predicted = int(predict_classes(probabilities[None], threshold)[0])
        result = {
            "image": str(path),
            "class": classifier.class_names[predicted],
            "probabilities": dict(
                zip(classifier.class_names, map(float, probabilities), strict=True)
            ),
        }
        if model is not None and args.gradcam is not None:
            heatmap = gradcam(model, torch.from_numpy(pixels), [predicted])[0]
            overlay = args.gradcam / f"{path.stem}_gradcam.png"
            save_overlay_png(overlay, image, heatmap)
            result["gradcam"] = str(overlay)
        if args.json:
            print(json.dumps(result))
        else:
            shown = "  ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
            print(f"{path}: {result['class']}  ({shown})")
    return 1 if failures else 0
