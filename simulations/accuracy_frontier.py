"""Accuracy frontier: accuracy and AUC against peak training memory, like the paper's figure.

One command runs every configuration on one machine, appends each result to `results.jsonl` as
it finishes (a rerun skips what is done), then writes `frontier.md` (table) and `frontier.png`.

    python -m simulations.accuracy_frontier --out docs/frontier --datasets pneumoniamnist

Centralized configurations: HXR-50/100/150 x {scratch, pre-warmed, distilled from ResNet-18},
MobileNetV2 and ResNet-18 from scratch, with the same epochs and seed. The ResNet-18 row is also
the teacher of every distilled row, trained once per dataset and kept in `teachers/`; a
distilled row's time and memory include the teacher's, as a user without a teacher would pay.
Peak training memory is measured apart, per phase, in a fresh process (`memory.jsonl`).

Federated configuration (`--federated`): HXR-150 pre-warmed over 5 virtual clinics (Dirichlet
0.5), with the same clinics alone (local-only) and one model on all of them with the
federation's budget, via `hxr simulate --baselines`'s code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from hxr_model.checkpoint import load_checkpoint, save_checkpoint
from hxr_model.data import DataSplits, load_splits
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
TEACHER = "resnet18"
CENTRALIZED = "centralized"
# The federated configuration, as issue 4 measured it: 5 clinics, Dirichlet 0.5, 10 rounds.
FEDERATED_MODEL = "hxr150"
FEDERATED_SITES = 5
FEDERATED_PARTITION = "dirichlet:0.5"


def configurations(models: list[str]) -> Iterator[tuple[str, str]]:
    """Every (model, variant), the teacher's row before the distilled rows that reuse it."""
    hxr = [model for model in models if model in HXR_MODELS]
    for model in hxr:
        yield from ((model, "scratch"), (model, "prewarmed"))
    for model in models:
        if model not in HXR_MODELS:
            yield model, "scratch"
    for model in hxr:
        yield model, "distilled"


def load_dataset(dataset: Dataset, seed: int) -> DataSplits:
    # Files of another class (covid in the Kermany subset) are skipped and counted, not hidden.
    return load_splits(
        dataset.ref,
        dataset.image_size,
        skip_bad=dataset.label_map is not None,
        seed=seed,
        label_map=dataset.label_map,
    )


def run_one(
    dataset_name: str,
    model: str,
    variant: str,
    args: argparse.Namespace,
    teacher_row: dict[str, Any] | None,
) -> dict[str, Any]:
    splits = load_dataset(DATASETS[dataset_name], args.seed)
    quiet = {"device": "cpu", "progress": False, "seed": args.seed}
    teacher_path = args.out / "teachers" / f"{dataset_name}-{TEACHER}.pt"
    distilled = variant == "distilled"
    reuse_teacher = distilled and teacher_row is not None and teacher_path.is_file()
    outcome = fit(
        model,
        splits,
        TrainConfig(epochs=args.epochs, **quiet),
        PrewarmConfig(epochs=args.prewarm_epochs, batch_size=256, **quiet)
        if variant == "prewarmed"
        else None,
        DistillConfig(teacher=TEACHER) if distilled else None,
        load_checkpoint(teacher_path).model if reuse_teacher else None,
    )
    if (model, variant) == (TEACHER, "scratch"):
        teacher_path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(
            teacher_path,
            outcome.model,
            model_name=TEACHER,
            class_names=splits.class_names,
            image_size=DATASETS[dataset_name].image_size,
        )
    # A distilled row pays for its teacher's time: trained here (in `outcome.seconds`) or reused.
    seconds = outcome.seconds + (teacher_row["seconds"] if reuse_teacher and teacher_row else 0.0)
    validation = outcome.report["validation"]
    return {
        "setting": CENTRALIZED,
        "model": model,
        "variant": variant,
        "accuracy": validation["accuracy"],
        "balanced_accuracy": validation["balanced_accuracy"],
        "auc": validation["auc"],
        "seconds": seconds,
        "val_images": validation["n"],
        "skipped_files": len(splits.skipped),
    }


def run_federated(dataset_name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Federated, local-only and same-budget centralized rows for HXR-150 pre-warmed.

    Imported here: the centralized frontier needs neither Flower nor Ray.
    """
    from simulations.baselines import ALL_SITES, add_baselines
    from simulations.federation import SimulationSettings, simulate

    dataset = DATASETS[dataset_name]
    settings = SimulationSettings(
        data=dataset.ref,
        label_map=dataset.label_map or {},
        skip_bad=dataset.label_map is not None,
        sites=FEDERATED_SITES,
        partition=FEDERATED_PARTITION,
        model=FEDERATED_MODEL,
        image_size=dataset.image_size,
        seed=args.seed,
        cpus=args.threads,
        device="cpu",
        out=args.out / "federated" / dataset_name,
    )
    # A finished federation in the run folder (e.g. from `hxr simulate --baselines` with these
    # settings) is scored again rather than rerun: it takes an hour on two cores.
    run_dir = settings.out
    if not (run_dir / "summary.json").is_file():
        simulate(settings)
    if "baselines" not in json.loads((run_dir / "summary.json").read_text()):
        add_baselines(settings, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    site_peak = max(row["peak_memory_mb"] for row in summary["resources"].values())
    rows = []
    for setting, table in summary["baselines"].items():
        scores = table[ALL_SITES]
        rows.append(
            {
                "setting": setting if setting != CENTRALIZED else "centralized, same budget",
                "model": FEDERATED_MODEL,
                "variant": "prewarmed",
                "accuracy": scores["accuracy"],
                "balanced_accuracy": scores["balanced-accuracy"],
                "auc": scores["auc"],
                # Only the federation's clients report their memory.
                "peak_memory_mb": site_peak if setting == "federated" else None,
                "seconds": None,
                "val_images": sum(site["num-examples"] for site in summary["sites"].values()),
                "skipped_files": 0,
                "run_dir": str(run_dir),
            }
        )
    return rows


# Peak memory is reached in the first steps of a phase, so a short run of it tells.
MEMORY_IMAGES = 512


def _phase_memory_here(dataset_name: str, model: str, phase: str, out: Path, seed: int) -> float:
    """One phase of one recipe on MEMORY_IMAGES training images, in this (fresh) process."""
    torch.set_num_threads(1)
    splits = load_dataset(DATASETS[dataset_name], seed)
    few = splits.train.subset(np.arange(min(MEMORY_IMAGES, len(splits.train))))
    splits = dataclasses.replace(splits, train=few)
    quiet = {"device": "cpu", "progress": False, "seed": seed}
    teacher_path = out / "teachers" / f"{dataset_name}-{TEACHER}.pt"
    outcome = fit(
        model,
        splits,
        TrainConfig(epochs=1, **quiet),
        PrewarmConfig(epochs=1, batch_size=256, **quiet) if phase == "prewarm" else None,
        DistillConfig(teacher=TEACHER) if phase == "distill" else None,
        load_checkpoint(teacher_path).model if phase == "distill" else None,
    )
    if phase == "prewarm":
        return outcome.report["prewarm"]["peak_memory_mb"]
    return outcome.result.peak_memory_mb


def phase_memory(dataset_name: str, model: str, phase: str, args: argparse.Namespace) -> float:
    """Peak training memory of a phase (finetune, prewarm or distill) in a fresh process,
    remembered in `memory.jsonl`. Measured apart from the training runs: a run in a process that
    ran others before reuses their freed pages, and its RSS increase reads near zero."""
    path = args.out / "memory.jsonl"
    key = {"dataset": dataset_name, "model": model, "phase": phase}
    for row in read_results(path):
        if all(row[name] == value for name, value in key.items()):
            return row["peak_memory_mb"]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peak = pool.apply(_phase_memory_here, (dataset_name, model, phase, args.out, args.seed))
    with path.open("a") as stream:
        stream.write(json.dumps(key | {"peak_memory_mb": peak}) + "\n")
    return peak


def recipe_memory(row: dict[str, Any], args: argparse.Namespace) -> float:
    """A centralized row's peak over its phases; a distilled row pays for its teacher's."""
    dataset, model = row["dataset"], row["model"]
    finetune = phase_memory(dataset, model, "finetune", args)
    if row["variant"] == "prewarmed":
        return max(finetune, phase_memory(dataset, model, "prewarm", args))
    if row["variant"] == "distilled":
        teacher = phase_memory(dataset, TEACHER, "finetune", args)
        return max(phase_memory(dataset, model, "distill", args), teacher)
    return finetune


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"setting": CENTRALIZED, **row} for row in rows]


def table_order(row: dict[str, Any]) -> tuple[int, bool, int, int]:
    """Datasets as listed, centralized rows first, models and variants in configuration order."""
    models = [*HXR_MODELS, *BASELINES]
    return (
        list(DATASETS).index(row["dataset"]),
        row["setting"] != CENTRALIZED,
        models.index(row["model"]),
        VARIANTS.index(row["variant"]),
    )


def _figure(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | setting | model | variant | val accuracy | balanced acc. | AUC | peak train MB "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['setting']} | {row['model']} | {row['variant']} | "
            f"{row['accuracy']:.4f} | {row['balanced_accuracy']:.4f} | "
            f"{_figure(row['auc'], '{:.4f}')} | {_figure(row['peak_memory_mb'], '{:.0f}')} | "
            f"{_figure(row['seconds'], '{:.0f}')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 8), squeeze=False)
    markers = {"scratch": "o", "prewarmed": "*", "distilled": "s"}
    for column, name in enumerate(datasets):
        for line, metric in enumerate(("accuracy", "auc")):
            axis = axes[line][column]
            plotted = (
                r
                for r in rows
                if r["dataset"] == name and r[metric] is not None and r["peak_memory_mb"]
            )
            for row in plotted:
                federated = row["setting"] != CENTRALIZED
                axis.scatter(
                    row["peak_memory_mb"],
                    row[metric],
                    marker=markers[row["variant"]],
                    s=70,
                    facecolors="none" if federated else None,
                    edgecolors="C3" if federated else None,
                )
                label = f"{row['model']}/{row['variant']}" + (" (federated)" if federated else "")
                axis.annotate(
                    label,
                    (row["peak_memory_mb"], row[metric]),
                    fontsize=7,
                    xytext=(4, 2),
                    textcoords="offset points",
                )
            axis.set_xlabel("peak training memory (MB, RSS increase in a fresh process)")
            axis.set_ylabel(f"validation {metric}")
            axis.set_title(name)
            axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(row) + "\n")
    auc = _figure(row["auc"], "{:.4f}")
    print(f"  {row['setting']}: accuracy {row['accuracy']:.4f}  AUC {auc}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/frontier"))
    parser.add_argument("--datasets", default="pneumoniamnist,cxr4,cxr4-kermany")
    parser.add_argument("--models", default=",".join(HXR_MODELS + BASELINES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--federated",
        default="",
        help="datasets to also federate HXR-150 pre-warmed on, e.g. pneumoniamnist,cxr4",
    )
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--prewarm-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    done = {
        (r["dataset"], r["setting"], r["model"], r["variant"]) for r in read_results(results_path)
    }
    variants = set(args.variants.split(","))
    for dataset_name in [name for name in args.datasets.split(",") if name]:
        for model, variant in configurations(args.models.split(",")):
            if (dataset_name, CENTRALIZED, model, variant) in done or variant not in variants:
                continue
            print(f"{dataset_name}: {model} {variant} ...", flush=True)
            teacher_row = next(
                (
                    r
                    for r in read_results(results_path)
                    if (r["dataset"], r["setting"], r["model"], r["variant"])
                    == (dataset_name, CENTRALIZED, TEACHER, "scratch")
                ),
                None,
            )
            row = run_one(dataset_name, model, variant, args, teacher_row)
            append(results_path, {"dataset": dataset_name, **row})
    for dataset_name in [name for name in args.federated.split(",") if name]:
        if (dataset_name, "federated", FEDERATED_MODEL, "prewarmed") in done:
            continue
        print(f"{dataset_name}: {FEDERATED_MODEL} prewarmed, federated ...", flush=True)
        for row in run_federated(dataset_name, args):
            append(results_path, {"dataset": dataset_name, **row})
    rows = sorted(read_results(results_path), key=table_order)
    for row in rows:
        if row["setting"] == CENTRALIZED:
            row["peak_memory_mb"] = recipe_memory(row, args)
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
