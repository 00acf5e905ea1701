"""The two phases of a federated run and which weights each one exchanges.

Pre-warming (SimCLR) trains the encoder and a projection head; fine-tuning trains the whole
classifier. The projection head travels under `PROJECTION_PREFIX` beside the classifier's names,
so one flat state describes everything the federation keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeVar

from hxr_model.prewarm import ENCODER_PREFIX

Phase = Literal["prewarm", "finetune"]
PHASES: tuple[Phase, ...] = ("prewarm", "finetune")

PROJECTION_PREFIX = "projection."
# `RadiographClassifier.head`: its last layer holds one row per class.
HEAD_PREFIX = "head."
MEAN_SUFFIX = ".running_mean"
VAR_SUFFIX = ".running_var"
STATISTICS_SUFFIXES = (MEAN_SUFFIX, VAR_SUFFIX)

Value = TypeVar("Value")


def is_exchanged(name: str, phase: Phase) -> bool:
    """Which global weights a phase sends out: pre-warming touches encoder + projection only."""
    if phase == "prewarm":
        return name.startswith((ENCODER_PREFIX, PROJECTION_PREFIX))
    return not name.startswith(PROJECTION_PREFIX)


def is_statistic(name: str) -> bool:
    """BatchNorm running statistics: measurements of a site's images, not learned weights."""
    return name.endswith(STATISTICS_SUFFIXES)


def batchnorm_names(state: Mapping[str, object]) -> set[str]:
    """Every BatchNorm entry of a flat state: its statistics and, by the same layer name, its
    affine weight and bias (what FedBN keeps at the clinic)."""
    layers = {name.removesuffix(MEAN_SUFFIX) for name in state if name.endswith(MEAN_SUFFIX)}
    candidates = {layer + suffix for layer in layers for suffix in (".weight", ".bias")}
    return {name for name in state if is_statistic(name) or name in candidates}


def phase_state(state: Mapping[str, Value], phase: Phase) -> dict[str, Value]:
    return {name: value for name, value in state.items() if is_exchanged(name, phase)}
