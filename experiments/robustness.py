"""Robustness to another hospital: intensity standardisation and scanner-shift augmentation.

Two studies, each model trained from scratch with the same budget in every arm:

- `styles`: leave one scanner style out on the phantoms (`synthetic:N:4`): train on three
  styles (validation, for the best epoch, from those three too), score on every image of the
  fourth.
- `shifts`: `cxr4`, trained on its train split, scored on its validation split clean and under
  fixed synthetic shifts (gamma, contrast, blur, noise, zoom, burnt-in text).
- `processing`: a real processing shift. Trained on cxr4's Kermany images (train split,
  validation for the best epoch), scored on their held-out test patients and on every
  kermany224 radiograph of a patient absent from cxr4: the same hospital's images, resized
  without keeping the aspect ratio, of children the model never saw.

Arms: `before` (no standardisation, light augmentation: the models as they were), `after`
(standardisation and scanner-shift augmentation), and each change alone.

    python -m experiments.robustness --out runs/robustness --threads 1

Each result is appended to `results.jsonl` as it finishes (a rerun skips what is done); the
tables go to `robustness.md`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from experiments.shared_data import SHARED_DATASETS, add_data_root_option
from hxr_model.augment import add_noise, adjust_intensity, burn_in_text, gaussian_blur, resample
from hxr_model.data import DataSplits, RadiographDataset, load_splits
from hxr_model.data.scan import scan
from hxr_model.data.splits import grouped_split
from hxr_model.metrics import classification_metrics
from hxr_model.models import RadiographClassifier, build_model
from hxr_model.standardisation import (
    DEFAULT_STANDARDISATION,
    IntensityStandardisation,
    StandardisationConfig,
)
from hxr_model.text_table import format_markdown_table
from hxr_model.training import Augmentation, TrainConfig, predict_probabilities, train_classifier

STYLES = 4
# What each study other than `styles` is scored on, the last part of a result's key.
SCORED_ON = {"shifts": "cxr4", "processing": "kermany224"}
# Shifted views are seeded apart from training, so every arm is scored on the same images.
SHIFT_SEED = 1234


@dataclass(frozen=True)
class Arm:
    standardisation: StandardisationConfig | None
    augmentation: Augmentation


ARMS = {
    "before": Arm(None, "light"),
    "standardised": Arm(DEFAULT_STANDARDISATION, "light"),
    "augmented": Arm(None, "scanner-shift"),
    "after": Arm(DEFAULT_STANDARDISATION, "scanner-shift"),
}


def _constant(images: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((images.shape[0],), value)


def _zoom(images: torch.Tensor) -> torch.Tensor:
    """The central 80 % of the side, enlarged: a tighter field of view."""
    zero = _constant(images, 0.0)
    side = _constant(images, 0.8)
    return resample(images, (side, side), zero, (zero, zero))


Shift = Callable[[torch.Tensor], torch.Tensor]


def _exposure(gamma: float = 1.0, contrast: float = 1.0) -> Shift:
    return lambda x: adjust_intensity(
        x, _constant(x, gamma), _constant(x, contrast), _constant(x, 0)
    )


def _seeded(
    shift: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor], value: float
) -> Shift:
    return lambda x: shift(x, _constant(x, value), torch.Generator().manual_seed(SHIFT_SEED))


SHIFTS: dict[str, Shift] = {
    "clean": lambda images: images,
    "gamma 0.6": _exposure(gamma=0.6),
    "gamma 1.6": _exposure(gamma=1.6),
    "contrast 0.6": _exposure(contrast=0.6),
    "blur 1 px": lambda x: gaussian_blur(x, _constant(x, 1.0)),
    "noise 0.05": _seeded(add_noise, 0.05),
    "zoom 1.25": _zoom,
    "text": _seeded(burn_in_text, 0.08),
}


def make_model(name: str, num_classes: int, arm: Arm) -> RadiographClassifier:
    model = build_model(name, num_classes)
    model.standardize = IntensityStandardisation(arm.standardisation)
    return model


def score(
    model: RadiographClassifier, images: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict[str, float]:
    """Accuracy and balanced accuracy of `model` on a batch of images."""
    truth, probabilities = predict_probabilities(model, TensorDataset(images, labels), device="cpu")
    metrics = classification_metrics(truth, probabilities, classes)
    return {"accuracy": metrics["accuracy"], "balanced_accuracy": metrics["balanced_accuracy"]}


def train(
    model_name: str,
    arm: Arm,
    seed: int,
    epochs: int,
    train_set: RadiographDataset,
    val_set: RadiographDataset,
) -> tuple[RadiographClassifier, float]:
    """The model at its best validation epoch, and its validation accuracy; `seed` fixes the
    initial weights too, so a result does not depend on the runs before it."""
    torch.manual_seed(seed)
    model = make_model(model_name, len(train_set.class_names), arm)
    config = TrainConfig(
        epochs=epochs, seed=seed, augmentation=arm.augmentation, device="cpu", progress=False
    )
    result = train_classifier(model, train_set, val_set, config)
    return model.eval(), result.val_metrics["accuracy"]


Fold = tuple[int, RadiographDataset, RadiographDataset, RadiographDataset]


def style_folds(dataset: RadiographDataset, seed: int = 0) -> Iterator[Fold]:
    """(held-out style, train, val, held-out images) for each style: train and val come from
    the other styles only."""
    sources = np.array(dataset.sources, dtype=object)
    for style in range(STYLES):
        held_out = sources == f"scanner-{style}"
        others = dataset.subset(np.flatnonzero(~held_out))
        train, val = grouped_split(others, [0.15], seed)
        yield style, others.subset(train), others.subset(val), dataset.subset(held_out.nonzero()[0])


def run_styles(args: argparse.Namespace, done: set[tuple], results: Path) -> None:
    dataset = scan(f"synthetic:{args.phantoms}:{STYLES}", args.phantom_size).dataset
    for style, train_set, val_set, held_out in style_folds(dataset):
        images, labels = held_out.tensors()
        for arm_name in args.arms:
            for seed in args.seeds:
                key = ("styles", arm_name, seed, style)
                if key in done:
                    continue
                model, val_accuracy = train(
                    args.model, ARMS[arm_name], seed, args.epochs, train_set, val_set
                )
                scores = score(model, images, labels, dataset.class_names)
                row = {"held_out": style, "val_accuracy": val_accuracy, **scores}
                _append(results, key, row)


def run_shifts(args: argparse.Namespace, done: set[tuple], results: Path) -> None:
    cxr4 = SHARED_DATASETS["cxr4"]
    splits = load_splits(cxr4.ref(args.data_root), cxr4.image_size, seed=0)
    images, labels = splits.val.tensors()
    views = {name: (shift(images), labels) for name, shift in SHIFTS.items()}
    _train_and_score(args, done, results, "shifts", splits, views)


def _train_and_score(
    args: argparse.Namespace,
    done: set[tuple],
    results: Path,
    study: str,
    splits: DataSplits,
    views: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Every arm and seed not done yet, trained on `splits` (its validation split picks the
    epoch) and scored on each view (images, labels)."""
    for arm_name in args.arms:
        for seed in args.seeds:
            key = (study, arm_name, seed, SCORED_ON[study])
            if key in done:
                continue
            model, _ = train(
                args.model, ARMS[arm_name], seed, args.epochs, splits.train, splits.val
            )
            scores = {
                name: score(model, images, labels, splits.class_names)
                for name, (images, labels) in views.items()
            }
            counts = {name: len(labels) for name, (_, labels) in views.items()}
            _append(results, key, {"scores": scores, "images": counts})


def unseen_patients(shifted: RadiographDataset, seen: set[str | None]) -> RadiographDataset:
    """The images of `shifted` whose patient is not in `seen` (an image without a patient id
    cannot be shown unseen, so it is left out too)."""
    keep = [i for i, patient in enumerate(shifted.patient_ids) if patient and patient not in seen]
    return shifted.subset(keep)


def run_processing(args: argparse.Namespace, done: set[tuple], results: Path) -> None:
    kermany, other = SHARED_DATASETS["cxr4-kermany"], SHARED_DATASETS["kermany224"]
    # COVID-19 images are not Kermany classes: skipped (and counted by the scan).
    splits = load_splits(
        kermany.ref(args.data_root), kermany.image_size, seed=0, skip_bad=True,
        label_map=kermany.label_map,
    )  # fmt: skip
    with (args.data_root / SHARED_DATASETS["cxr4"].file).open(newline="") as manifest:
        every_cxr4_patient = {row["patient_id"] for row in csv.DictReader(manifest)}
    shifted = scan(other.ref(args.data_root), other.image_size, label_map=other.label_map).dataset
    if shifted.class_names != splits.class_names:
        raise ValueError(f"class order differs: {shifted.class_names} vs {splits.class_names}")
    views = {
        "cxr4 test patients": splits.test.tensors(),
        "kermany224, patients not in cxr4": unseen_patients(shifted, every_cxr4_patient).tensors(),
    }
    _train_and_score(args, done, results, "processing", splits, views)


def _append(results: Path, key: tuple, row: dict[str, Any]) -> None:
    study, arm, seed, _ = key
    record = {"study": study, "arm": arm, "seed": seed, **row}
    with results.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def _key(record: dict[str, Any]) -> tuple:
    study = record["study"]
    where = record["held_out"] if study == "styles" else SCORED_ON[study]
    return (study, record["arm"], record["seed"], where)


def _mean_sd(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.fmean(values):.3f}" + ("" if math.isnan(spread) else f" ± {spread:.3f}")


def _per_seed_means(records: list[dict[str, Any]], value: Callable[[dict], float]) -> str:
    """Mean ± sd over seeds of each seed's mean `value` over its records."""
    seeds = sorted({r["seed"] for r in records})
    return _mean_sd(
        [statistics.fmean(value(r) for r in records if r["seed"] == seed) for seed in seeds]
    )


def styles_table(records: list[dict[str, Any]]) -> str:
    """Held-out-style accuracy per arm (mean ± sd over seeds), its mean over the styles, and
    the accuracy on the validation split of the styles trained on."""
    rows = []
    for arm in ARMS:
        mine = [r for r in records if r["study"] == "styles" and r["arm"] == arm]
        if not mine:
            continue
        per_style = [[r["accuracy"] for r in mine if r["held_out"] == s] for s in range(STYLES)]
        rows.append(
            [
                arm,
                *(_mean_sd(v) if v else "n/a" for v in per_style),
                _per_seed_means(mine, lambda r: r["accuracy"]),
                _per_seed_means(mine, lambda r: r["val_accuracy"]),
            ]
        )
    header = [
        "arm",
        *(f"scanner-{s} held out" for s in range(STYLES)),
        "mean held out",
        "val, styles trained on",
    ]
    return format_markdown_table(header, rows)


def shifts_table(records: list[dict[str, Any]]) -> str:
    """Validation accuracy per arm clean and under each shift (mean ± sd over seeds), and the
    mean over the shifts."""
    rows = []
    shifted = [name for name in SHIFTS if name != "clean"]
    for arm in ARMS:
        mine = [r for r in records if r["study"] == "shifts" and r["arm"] == arm]
        if not mine:
            continue
        rows.append(
            [
                arm,
                *(_mean_sd([r["scores"][name]["accuracy"] for r in mine]) for name in SHIFTS),
                _per_seed_means(
                    mine, lambda r: statistics.fmean(r["scores"][n]["accuracy"] for n in shifted)
                ),
            ]
        )
    return format_markdown_table(["arm", *SHIFTS, "mean shifted"], rows)


def processing_table(records: list[dict[str, Any]]) -> str:
    """Accuracy and balanced accuracy per arm on cxr4's own test patients and on kermany224's
    unseen patients (mean ± sd over seeds)."""
    mine = [r for r in records if r["study"] == "processing"]
    views = list(mine[0]["scores"]) if mine else []
    rows = []
    for arm in ARMS:
        arm_records = [r for r in mine if r["arm"] == arm]
        if arm_records:
            rows.append(
                [arm]
                + [
                    _mean_sd([r["scores"][view][metric] for r in arm_records])
                    for view in views
                    for metric in ("accuracy", "balanced_accuracy")
                ]
            )
    header = ["arm"] + [f"{view}: {m}" for view in views for m in ("accuracy", "balanced acc.")]
    return format_markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/robustness"))
    add_data_root_option(parser)
    parser.add_argument("--studies", default="styles,shifts,processing")
    parser.add_argument("--arms", type=lambda text: text.split(","), default=list(ARMS))
    parser.add_argument(
        "--seeds", type=lambda text: [int(s) for s in text.split(",")], default=[0, 1]
    )
    parser.add_argument("--model", default="hxr50")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--phantoms", type=int, default=960)
    parser.add_argument("--phantom-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    records = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    )
    done = {_key(record) for record in records}
    studies = {"styles": run_styles, "shifts": run_shifts, "processing": run_processing}
    for study in filter(None, args.studies.split(",")):
        studies[study](args, done, results)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    text = (
        "Leave one scanner style out (phantoms), held-out accuracy:\n\n"
        f"{styles_table(records)}\n\ncxr4 validation accuracy under synthetic shifts:\n\n"
        f"{shifts_table(records)}\n\nTrained on cxr4's Kermany images, scored on its test "
        f"patients and on kermany224's unseen patients:\n\n{processing_table(records)}\n"
    )
    (args.out / "robustness.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
