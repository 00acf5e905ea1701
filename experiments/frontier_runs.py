"""The frontier's run matrix: which configurations run, and one run of each kind.

Centralized configurations: HXR-50/100/150 x {scratch, pre-warmed, distilled from ResNet-18},
MobileNetV2, MobileNetV3-Small/Large and ResNet-18 from scratch, with the same epochs and seed.
The ResNet-18 row is also the teacher of every distilled row, trained once per dataset and kept
in `teachers/`; a distilled row's time includes the teacher's, as a user without a teacher
would pay.

Federated configuration: HXR-150 pre-warmed over 5 virtual clinics (Dirichlet 0.5), with the
same clinics alone (local-only) and one model on all of them with the federation's budget, via
`hxr simulate --baselines`'s code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.shared_data import SHARED_DATASETS
from hxr_model.checkpoint import load_checkpoint, save_checkpoint
from hxr_model.data import DataSplits, load_splits
from hxr_model.distill import DistillConfig
from hxr_model.prewarm import PrewarmConfig
from hxr_model.recipe import fit
from hxr_model.training import TrainConfig

HXR_MODELS = ("hxr50", "hxr100", "hxr150")
BASELINES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18")
VARIANTS = ("scratch", "prewarmed", "distilled")
TEACHER = "resnet18"
CENTRALIZED = "centralized"
# The federated configuration of the documented PneumoniaMNIST federation (2026-11-26):
# 5 clinics, Dirichlet 0.5, 10 rounds.
FEDERATED_MODEL = "hxr150"
FEDERATED_SITES = 5
FEDERATED_PARTITION = "dirichlet:0.5"
PREWARM_BATCH_SIZE = 256


@dataclass(frozen=True)
class FrontierSettings:
    """The command line's choices that every run shares (picklable: memory runs are spawned)."""

    out: Path
    data_root: Path
    epochs: int
    prewarm_epochs: int
    seed: int
    threads: int

    def teacher_path(self, dataset_name: str) -> Path:
        return self.out / "teachers" / f"{dataset_name}-{TEACHER}.pt"


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


def load_dataset(dataset_name: str, settings: FrontierSettings) -> DataSplits:
    dataset = SHARED_DATASETS[dataset_name]
    # Files of another class (covid in the Kermany subset) are skipped and counted, not hidden.
    return load_splits(
        dataset.ref(settings.data_root),
        dataset.image_size,
        skip_bad=dataset.label_map is not None,
        seed=settings.seed,
        label_map=dataset.label_map,
    )


def run_centralized(
    dataset_name: str,
    model: str,
    variant: str,
    settings: FrontierSettings,
    teacher_row: dict[str, Any] | None,
) -> dict[str, Any]:
    """Train one centralized configuration and score it on the validation split."""
    splits = load_dataset(dataset_name, settings)
    quiet = {"device": "cpu", "progress": False, "seed": settings.seed}
    teacher_path = settings.teacher_path(dataset_name)
    distilled = variant == "distilled"
    reuse_teacher = distilled and teacher_row is not None and teacher_path.is_file()
    outcome = fit(
        model,
        splits,
        TrainConfig(epochs=settings.epochs, **quiet),
        PrewarmConfig(epochs=settings.prewarm_epochs, batch_size=PREWARM_BATCH_SIZE, **quiet)
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
            image_size=SHARED_DATASETS[dataset_name].image_size,
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


def run_federated(dataset_name: str, settings: FrontierSettings) -> list[dict[str, Any]]:
    """Federated, local-only and same-budget centralized rows for HXR-150 pre-warmed.

    Imported here: the centralized frontier needs neither Flower nor Ray.
    """
    from simulations.baselines import add_comparison
    from simulations.federation import SimulationSettings, simulate

    dataset = SHARED_DATASETS[dataset_name]
    simulation = SimulationSettings(
        data=dataset.ref(settings.data_root),
        label_map=dataset.label_map or {},
        skip_bad=dataset.label_map is not None,
        sites=FEDERATED_SITES,
        partition=FEDERATED_PARTITION,
        model=FEDERATED_MODEL,
        image_size=dataset.image_size,
        seed=settings.seed,
        cpus=settings.threads,
        device="cpu",
        out=settings.out / "federated" / dataset_name,
    )
    # A finished federation in the run folder (e.g. from `hxr simulate --baselines` with these
    # settings) is scored again rather than rerun: it takes an hour on two cores.
    run_dir = simulation.out
    if not (run_dir / "summary.json").is_file():
        simulate(simulation)
    if "comparison" not in json.loads((run_dir / "summary.json").read_text()):
        add_comparison(simulation, run_dir, centralized=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    site_peak = max(row["peak_memory_mb"] for row in summary["resources"].values())
    pooled = summary["comparison"]["pooled_test"]
    settings_scores = {
        "federated": pooled["federated"],
        "centralized, same budget": pooled["centralized"],
        "local-only (mean)": pooled["local-only summary"]["mean"],
    }
    return [
        {
            "setting": setting,
            "model": FEDERATED_MODEL,
            "variant": "prewarmed",
            "accuracy": scores["accuracy"],
            "balanced_accuracy": scores["balanced-accuracy"],
            "auc": scores.get("auc"),
            # Only the federation's clients report their memory.
            "peak_memory_mb": site_peak if setting == "federated" else None,
            "seconds": None,
            "val_images": pooled["num-examples"],
            "skipped_files": 0,
            "run_dir": str(run_dir),
        }
        for setting, scores in settings_scores.items()
    ]
