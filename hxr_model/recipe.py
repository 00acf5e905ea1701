"""The three ways the paper trains a model, as one function: scratch, pre-warmed, distilled.

`hxr train` and the accuracy-frontier script both call `fit`, so a comparison in the frontier is
exactly what a user gets from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hxr_model.data import DataSplits
from hxr_model.data.refs import names_radiograph_files
from hxr_model.distill import DistillConfig, distill_classifier
from hxr_model.models import RadiographClassifier, build_model
from hxr_model.prewarm import PrewarmConfig, prewarm_encoder
from hxr_model.training import Imbalance, TrainConfig, TrainResult, train_classifier


class Recipe(BaseModel):
    """The schedule `hxr train` runs for what the user leaves unsaid; any option overrides it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    prewarm_epochs: int = Field(ge=0)
    prewarm_batch_size: int = Field(ge=2)
    epochs: int = Field(ge=0)
    imbalance: Imbalance
    max_memory_mb: float | None = Field(gt=0)


# Phantoms and MedMNIST files: a short run from scratch, which their small images need.
QUICK_RECIPE = Recipe(
    name="quick",
    prewarm_epochs=0,
    prewarm_batch_size=256,
    epochs=10,
    imbalance="none",
    max_memory_mb=None,
)
# Radiograph files, as measured on cxr4 at 128 and 224 px (docs/benchmarks.md, "cxr4 at
# 224 px"): 5 SimCLR epochs of 128 pairs, then 20 fine-tuning epochs (30 were no better); class
# weights, since a clinic's rare disease is the one that matters; and a 1,000 MB budget, which a
# 4 GB clinic laptop can spare: pre-warming at 224 px otherwise peaks at 4 GB, and under it runs
# in exact chunks (HXR-150 at 224 px: under 800 MB, about 14 minutes on one CPU thread).
RADIOGRAPH_FILE_RECIPE = Recipe(
    name="radiograph files",
    prewarm_epochs=5,
    prewarm_batch_size=128,
    epochs=20,
    imbalance="class-weights",
    max_memory_mb=1000,
)


def default_recipe(ref: str) -> Recipe:
    """RADIOGRAPH_FILE_RECIPE where any source of `ref` is a folder or manifest of radiograph
    files, else QUICK_RECIPE."""
    return RADIOGRAPH_FILE_RECIPE if names_radiograph_files(ref) else QUICK_RECIPE


@dataclass
class FitOutcome:
    model: RadiographClassifier
    result: TrainResult
    report: dict[str, Any]  # JSON-ready: data sizes, pre-warm, teacher, training, validation

    @property
    def peak_memory_mb(self) -> float:
        """The largest peak of any phase the student's training needed (teacher excluded)."""
        prewarm = self.report.get("prewarm", {}).get("peak_memory_mb", 0.0)
        return max(prewarm, self.result.peak_memory_mb)

    @property
    def seconds(self) -> float:
        """Wall time of every phase, teacher training included."""
        return sum(
            self.report.get(phase, {}).get("seconds", 0.0)
            for phase in ("prewarm", "teacher", "training")
        )


def summarise(result: TrainResult) -> dict[str, Any]:
    return {
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "batch_size": result.batch_size,
        "peak_memory_mb": result.peak_memory_mb,
        "seconds": result.seconds,
        "images_per_s": result.images_per_s,
        "threshold": result.threshold,
    }


def fit(
    model_name: str,
    splits: DataSplits,
    train_config: TrainConfig,
    prewarm_config: PrewarmConfig | None = None,
    distill_config: DistillConfig | None = None,
    trained_teacher: RadiographClassifier | None = None,
) -> FitOutcome:
    """Optionally pre-warm (SimCLR on the training images), then fine-tune, or distil from a
    teacher (`distill_config.teacher`) trained first on the same split.

    `trained_teacher`, already trained on this split, is used instead of training one, so a
    comparison of several students pays for its teacher once (its cost is then the caller's to
    report).
    """
    model = build_model(model_name, len(splits.class_names))
    report: dict[str, Any] = {
        "model": model_name,
        "class_names": splits.class_names,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "skipped_files": len(splits.skipped),
        "data_warnings": len(splits.warnings),
    }
    if prewarm_config is not None and prewarm_config.epochs > 0:
        prewarm = prewarm_encoder(model, splits.train, prewarm_config)
        report["prewarm"] = {
            "epochs": prewarm_config.epochs,
            "nt_xent": prewarm.losses,
            # Image pairs compared in one loss, and in the network at once (the memory budget).
            "batch_size": prewarm.batch_size,
            "chunk_size": prewarm.chunk_size,
            "peak_memory_mb": prewarm.peak_memory_mb,
            "seconds": prewarm.seconds,
            "images_per_s": prewarm.images_per_s,
        }
    if distill_config is not None:
        if trained_teacher is None:
            teacher = build_model(distill_config.teacher, len(splits.class_names))
            teacher_result = train_classifier(teacher, splits.train, splits.val, train_config)
            report["teacher"] = {"model": distill_config.teacher, **summarise(teacher_result)}
        else:
            teacher = trained_teacher
            report["teacher"] = {"model": distill_config.teacher, "reused": True}
        result = distill_classifier(
            model, teacher, splits.train, splits.val, train_config, distill_config
        )
    else:
        result = train_classifier(model, splits.train, splits.val, train_config)
    report["training"] = summarise(result)
    report["validation"] = result.val_metrics
    return FitOutcome(model, result, report)
