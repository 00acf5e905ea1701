"""A model trained on one clinic's images alone: the cross-site matrix's row for that clinic.

What a clinic could have trained without the federation, with the federation's budget: the
same passes over each image, SimCLR first for the pre-warm rounds' epochs, then fine-tuning for
the fine-tuning rounds' epochs, from the run's initial weights. It leaves the clinic only where
its site config allows (`client.disclosure`).
"""

from __future__ import annotations

from torch.utils.data import ConcatDataset, Dataset

from client.local_rounds import State, finetune_metrics
from client.site_config import SiteConfig
from client.site_data import SiteData
from hxr_model.models import RadiographClassifier, build_model
from hxr_model.prewarm import PrewarmConfig, prewarm_encoder
from hxr_model.training import (
    LabelledDataset,
    TrainConfig,
    TrainResult,
    train_classifier,
)
from protocol.instructions import LocalModelInstructions
from protocol.model_state import float_state, load_into
from protocol.replies import FinetuneMetrics
from protocol.schedule import phase_state


def train_alone(
    model: RadiographClassifier,
    train: LabelledDataset,
    val: LabelledDataset | None,
    prewarm: PrewarmConfig,
    finetune: TrainConfig,
) -> TrainResult:
    """Pre-warm `model` in place with SimCLR on every training image (train and validation:
    no label is used), then fine-tune it on `train`, the best epoch chosen on `val`."""
    val = val if val is not None and len(val) else None
    if prewarm.epochs:
        images: Dataset = ConcatDataset([train, val]) if val is not None else train
        prewarm_encoder(model, images, prewarm)
    return train_classifier(model, train, val, finetune)


def local_model_round(
    state: State, instructions: LocalModelInstructions, site: SiteConfig, data: SiteData
) -> tuple[State, FinetuneMetrics]:
    """Train the clinic's local-only model from the run's initial classifier weights `state`;
    returns its weights and its scores on the clinic's validation split. Seeded by the run's
    seed, as the simulation's local baselines are, so a clinic's model does not depend on the
    round it is asked in."""
    model = build_model(instructions.model, len(instructions.class_names))
    load_into(model, state, "finetune")
    shared = {
        "batch_size": instructions.batch_size,
        "seed": instructions.seed,
        "device": site.device,
        "max_memory_mb": site.max_memory_mb,
        "progress": False,
    }
    prewarm = PrewarmConfig(
        epochs=instructions.prewarm_budget,
        learning_rate=instructions.prewarm_learning_rate,
        temperature=instructions.temperature,
        projection_dim=instructions.projection_dim,
        **shared,
    )
    finetune = TrainConfig(
        epochs=instructions.finetune_budget,
        learning_rate=instructions.learning_rate,
        optimizer=instructions.optimizer,
        **shared,
    )
    result = train_alone(model, data.train, data.val, prewarm, finetune)
    return phase_state(float_state(model), "finetune"), finetune_metrics(result, instructions, data)
