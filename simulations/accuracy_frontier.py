"""Accuracy frontier: accuracy and AUC against peak training memory, like the paper's figure.

One command runs every configuration on one machine, appends each result to `results.jsonl` as
it finishes (a rerun skips what is done), then writes `frontier.md` (table) and `frontier.png`.

    python -m simulations.accuracy_frontier --out docs/frontier --datasets pneumoniamnist

Configurations: HXR-50/100/150 x {scratch, pre-warmed, distilled from ResNet-18}, MobileNetV2
and ResNet-18 from scratch, all centralized, with the same epochs and seed.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from hxr_model.data import load_splits
from hxr_model.distill import DistillConfig
from hxr_model.prewarm import PrewarmConfig
from hxr_model.recipe import fit
from hxr_model.training import TrainConfig

# The real data beside the project (never copied into it): ../shared/data.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    ref: str
    image_size: int
    label_map: dict[str, str] | None = None


DATASETS = {
    "pneumoniamnist": Dataset(f"medmnist:{SHARED}/pneumoniamnist/pneumoniamnist_trainval.npz", 28),
    "cxr4": Dataset(f"csv:{SHARED}/cxr4/manifest.csv", 64),
    # The Kermany subset: no confound between disease and hospital (see the data's README).
    "cxr4-kermany": Dataset(
        f"csv:{SHARED}/cxr4/manifest.csv",
        64,
        {"normal": "normal", "bacterial": "bacterial", "viral": "viral"},
    ),
}
HXR_MODELS = ("hxr50", "hxr100", "hxr150")
BASELINES = ("mobilenet_v2", "resnet18")
VARIANTS = ("scratch", "prewarmed", "distilled")


def configurations(models: list[str]) -> Iterator[tuple[str, str]]:
    for model in models:
        for variant in VARIANTS if model in HXR_MODELS else ("scratch",):
            yield model, variant


def run_one(dataset: Dataset, model: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    # Files of another class (covid in the Kermany subset) are skipped and counted, not hidden.
    splits = load_splits(
        dataset.ref,
        dataset.image_size,
        skip_bad=dataset.label_map is not None,
        seed=args.seed,
        label_map=dataset.label_map,
    )
    quiet = {"device": "cpu", "progress": False, "seed": args.seed}
    outcome = fit(
        model,
        splits,
        TrainConfig(epochs=args.epochs, **quiet),
        PrewarmConfig(epochs=args.prewarm_epochs, batch_size=256, **quiet)
        if variant == "prewarmed"
        else None,
        DistillConfig(teacher="resnet18") if variant == "distilled" else None,
    )
    validation = outcome.report["validation"]
    return {
        "model": model,
        "variant": variant,
        "accuracy": validation["accuracy"],
        "balanced_accuracy": validation["balanced_accuracy"],
        "auc": validation["auc"],
        "peak_memory_mb": outcome.peak_memory_mb,
        "seconds": outcome.seconds,
        "val_images": validation["n"],
        "skipped_files": len(splits.skipped),
    }


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | model | variant | val accuracy | balanced acc. | AUC | peak train MB | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        auc = "n/a" if row["auc"] is None else f"{row['auc']:.4f}"
        lines.append(
            f"| {row['dataset']} | {row['model']} | {row['variant']} | {row['accuracy']:.4f} | "
            f"{row['balanced_accuracy']:.4f} | {auc} | {row['peak_memory_mb']:.0f} | "
            f"{row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 8), squeeze=False)
    markers = {"scratch": "o", "prewarmed": "*", "distilled": "s"}
    for column, name in enumerate(datasets):
        for line, metric in enumerate(("accuracy", "auc")):
            axis = axes[line][column]
            for row in (r for r in rows if r["dataset"] == name and r[metric] is not None):
                axis.scatter(
                    row["peak_memory_mb"], row[metric], marker=markers[row["variant"]], s=70
                )
                axis.annotate(
                    f"{row['model']}/{row['variant']}",
                    (row["peak_memory_mb"], row[metric]),
                    fontsize=7,
                    xytext=(4, 2),
                    textcoords="offset points",
                )
            axis.set_xlabel("peak training memory (MB, process RSS increase)")
            axis.set_ylabel(f"validation {metric}")
            axis.set_title(name)
            axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/frontier"))
    parser.add_argument("--datasets", default="pneumoniamnist,cxr4,cxr4-kermany")
    parser.add_argument("--models", default=",".join(HXR_MODELS + BASELINES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--prewarm-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = {(r["dataset"], r["model"], r["variant"]) for r in read_results(results_path)}
    variants = set(args.variants.split(","))
    for dataset_name in args.datasets.split(","):
        for model, variant in configurations(args.models.split(",")):
            if (dataset_name, model, variant) in done or variant not in variants:
                continue
            print(f"{dataset_name}: {model} {variant} ...", flush=True)
            row = {"dataset": dataset_name, **run_one(DATASETS[dataset_name], model, variant, args)}
            with results_path.open("a") as stream:
                stream.write(json.dumps(row) + "\n")
            print(f"  accuracy {row['accuracy']:.4f}  AUC {row['auc']}", flush=True)
    rows = read_results(results_path)
    plot(rows, args.out / "frontier.png")
    header = (
        f"Measured {date.today()} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, epochs {args.epochs}, pre-warm epochs "
        f"{args.prewarm_epochs}, seed {args.seed}.\n\n"
    )
    (args.out / "frontier.md").write_text(header + table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
