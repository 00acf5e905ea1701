"""Peak training memory of the frontier's recipes, per phase, each in a fresh process.

Measured apart from the training runs: a run in a process that ran others before reuses their
freed pages, and its RSS increase reads near zero. Each phase is measured once and remembered in
`memory.jsonl`, so a rerun of the frontier measures only what is new.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from typing import Any, Literal

import numpy as np
import torch

from experiments.frontier_results import append_row, read_rows
from experiments.frontier_runs import (
    PREWARM_BATCH_SIZE,
    TEACHER,
    FrontierSettings,
    load_dataset,
)
from hxr_model.checkpoint import load_checkpoint
from hxr_model.distill import DistillConfig
from hxr_model.prewarm import PrewarmConfig
from hxr_model.recipe import fit
from hxr_model.training import TrainConfig

Phase = Literal["finetune", "prewarm", "distill"]

# Peak memory is reached in the first steps of a phase, so a short run of it tells.
MEMORY_IMAGES = 512


def recipe_memory(row: dict[str, Any], settings: FrontierSettings) -> float:
    """A centralized row's peak over its phases; a distilled row pays for its teacher's."""
    dataset, model = row["dataset"], row["model"]
    finetune = phase_memory(dataset, model, "finetune", settings)
    if row["variant"] == "prewarmed":
        return max(finetune, phase_memory(dataset, model, "prewarm", settings))
    if row["variant"] == "distilled":
        teacher = phase_memory(dataset, TEACHER, "finetune", settings)
        return max(phase_memory(dataset, model, "distill", settings), teacher)
    return finetune


def phase_memory(dataset_name: str, model: str, phase: Phase, settings: FrontierSettings) -> float:
    """Peak training memory of one phase, from `memory.jsonl` or measured in a fresh process."""
    path = settings.out / "memory.jsonl"
    key = {"dataset": dataset_name, "model": model, "phase": phase}
    for row in read_rows(path):
        if all(row[name] == value for name, value in key.items()):
            return row["peak_memory_mb"]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peak = pool.apply(_phase_memory_in_this_process, (dataset_name, model, phase, settings))
    append_row(path, key | {"peak_memory_mb": peak})
    return peak


def _phase_memory_in_this_process(
    dataset_name: str, model: str, phase: Phase, settings: FrontierSettings
) -> float:
    """One phase of one recipe on MEMORY_IMAGES training images, in this (fresh) process."""
    torch.set_num_threads(1)
    splits = load_dataset(dataset_name, settings)
    few = splits.train.subset(np.arange(min(MEMORY_IMAGES, len(splits.train))))
    splits = dataclasses.replace(splits, train=few)
    quiet = {"device": "cpu", "progress": False, "seed": settings.seed}
    outcome = fit(
        model,
        splits,
        TrainConfig(epochs=1, **quiet),
        PrewarmConfig(epochs=1, batch_size=PREWARM_BATCH_SIZE, **quiet)
        if phase == "prewarm"
        else None,
        DistillConfig(teacher=TEACHER) if phase == "distill" else None,
        load_checkpoint(settings.teacher_path(dataset_name)).model if phase == "distill" else None,
    )
    if phase == "prewarm":
        return outcome.report["prewarm"]["peak_memory_mb"]
    return outcome.result.peak_memory_mb
