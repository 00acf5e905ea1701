"""One site's work for a round: pre-warm, fine-tune or evaluate the weights the server sent.

Plain functions over numpy state dicts (no Flower types), so they are tested without a
federation; `client_app` only unpacks and packs messages around them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch.optim.swa_utils import update_bn
from torch.utils.data import ConcatDataset

from client.disclosure import sample_limits
from client.gradcam_samples import gradcam_samples
from client.site_config import SiteConfig
from client.site_data import SiteData
from hxr_model.gradcam import score_localisation
from hxr_model.metrics import SCORE_BINS, score_histogram
from hxr_model.models import RadiographClassifier, build_model
from hxr_model.prewarm import PrewarmConfig, PrewarmResult, ProjectionHead, prewarm_encoder
from hxr_model.runtime import resolve_device
from hxr_model.training import (
    TrainConfig,
    TrainResult,
    evaluate_classifier,
    make_loader,
    predict_probabilities,
    train_classifier,
)
from protocol.gradcam_samples import GradcamSamples
from protocol.instructions import RoundInstructions
from protocol.model_state import federated_state, float_state, load_into
from protocol.replies import (
    EvaluateMetrics,
    FinetuneMetrics,
    PrewarmMetrics,
    StatisticsMetrics,
)
from protocol.schedule import HEAD_PREFIX, PROJECTION_PREFIX, is_statistic, phase_state

State = dict[str, np.ndarray]
# Heat maps scored against lesion masks per evaluation: enough for a rate, bounded in cost.
LOCALISATION_IMAGES = 64


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _per_class_recall(metrics: Mapping[str, Any], class_names: list[str]) -> list[float]:
    """Recall per federation class; NaN where the split has no example of it."""
    per_class = metrics["per_class"]
    return [
        float(per_class[name]["recall"]) if per_class[name]["support"] else math.nan
        for name in class_names
    ]


def _model(instructions: RoundInstructions) -> RadiographClassifier:
    return build_model(instructions.model, len(instructions.class_names))


def _resources(result: TrainResult | PrewarmResult, data: SiteData) -> dict[str, float | int]:
    return {
        "peak_memory_mb": float(result.peak_memory_mb),
        "seconds": float(result.seconds),
        "images_per_s": float(result.images_per_s),
        "skipped_files": int(data.skipped),
    }


def _loop_settings(instructions: RoundInstructions, site: SiteConfig) -> dict[str, Any]:
    """The local loop's settings both phases share: the server's schedule, the site's device
    and memory budget, and a seed fixed by run, round and site."""
    return {
        "epochs": instructions.local_epochs,
        "batch_size": instructions.batch_size,
        "learning_rate": instructions.learning_rate,
        "optimizer": instructions.optimizer,
        "seed": instructions.site_seed(site.name),
        "device": site.device,
        "max_memory_mb": site.max_memory_mb,
        "progress": False,
        # The server lowers the rate from round to round; a schedule restarting in every round
        # would undo that.
        "schedule": "constant",
    }


def prewarm_round(
    state: State, instructions: RoundInstructions, site: SiteConfig, data: SiteData
) -> tuple[State, PrewarmMetrics]:
    """SimCLR on every labelled-or-not training image; returns encoder + projection head.

    The test split stays out: it must remain unseen to score the model honestly.
    """
    model = _model(instructions)
    load_into(model, state, "prewarm")
    projection = ProjectionHead(model.feature_dim, instructions.projection_dim)
    load_into(projection, state, "prewarm", PROJECTION_PREFIX)
    images = ConcatDataset([data.train, data.val]) if len(data.val) else data.train
    config = PrewarmConfig(
        **_loop_settings(instructions, site),
        temperature=instructions.temperature,
        projection_dim=instructions.projection_dim,
    )
    result = prewarm_encoder(model, images, config, projection)
    metrics = PrewarmMetrics(
        num_examples=len(images),
        train_loss=float(result.losses[-1]) if result.losses else math.nan,
        **_resources(result, data),
    )
    return phase_state(federated_state(model, projection), "prewarm"), metrics


def finetune_metrics(
    result: TrainResult, instructions: RoundInstructions, data: SiteData
) -> FinetuneMetrics:
    """A supervised round's reply: its loss, steps, resources and validation scores."""
    val_metrics = result.val_metrics or {}
    return FinetuneMetrics(
        num_examples=len(data.train),
        train_loss=float(result.history[-1]["train_loss"]) if result.history else math.nan,
        val_accuracy=_number(val_metrics.get("accuracy")),
        val_balanced_accuracy=_number(val_metrics.get("balanced_accuracy")),
        val_auc=_number(val_metrics.get("auc")),
        val_threshold=_number(result.threshold),
        per_class_recall=(
            _per_class_recall(val_metrics, instructions.class_names)
            if val_metrics
            else [math.nan] * len(instructions.class_names)
        ),
        local_steps=max(1, result.best_epoch)
        * len(make_loader(data.train, result.batch_size, torch.Generator())),
        **_resources(result, data),
    )


def finetune_round(
    state: State, instructions: RoundInstructions, site: SiteConfig, data: SiteData
) -> tuple[State, FinetuneMetrics]:
    """Supervised local training (with the FedProx term when the server asks for one)."""
    model = _model(instructions)
    load_into(model, state, "finetune")
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    batches = len(make_loader(data.train, instructions.batch_size, torch.Generator()))
    epochs = max(instructions.local_epochs, math.ceil(instructions.min_local_steps / batches))
    config = TrainConfig(
        **_loop_settings(instructions, site) | {"epochs": epochs},
        proximal_mu=instructions.proximal_mu,
        absent_class_scale=instructions.absent_class_scale,
        imbalance=instructions.imbalance,
        target_class_prior=instructions.class_prior,
        keep_best_epoch=instructions.keep_best_epoch,
    )
    val = data.val if len(data.val) else None
    result = train_classifier(model, data.train, val, config, reference_weights=reference)
    return phase_state(float_state(model), "finetune"), finetune_metrics(result, instructions, data)


def statistics_round(
    state: State, instructions: RoundInstructions, site: SiteConfig, data: SiteData
) -> tuple[State, StatisticsMetrics]:
    """BatchNorm statistics of the aggregated weights on this site's training images.

    Statistics averaged from the sites' own models describe features those models made, not
    the aggregated model's; under label skew the global model then predicts one class for
    everything. Re-measured here for the global weights, the server pools them exactly.
    """
    model = _model(instructions)
    load_into(model, state, "finetune")
    device = resolve_device(site.device)
    generator = torch.Generator().manual_seed(instructions.site_seed(site.name))
    loader = make_loader(data.train, instructions.batch_size, generator)
    with torch.no_grad():
        update_bn(loader, model.to(device), device)
    statistics = {
        name: tensor.detach().cpu().numpy()
        for name, tensor in model.state_dict().items()
        if is_statistic(name)
    }
    return statistics, StatisticsMetrics(num_examples=len(data.train))


def _validation_counts(
    model: RadiographClassifier, data: SiteData, instructions: RoundInstructions, site: SiteConfig
) -> tuple[list[int], list[int]]:
    """The global model on this site's validation split, as counts only: its score histogram
    (binary tasks; zeros otherwise) and its confusion matrix (zeros without a split)."""
    classes = len(instructions.class_names)
    if not len(data.val):
        return [0] * 2 * SCORE_BINS, [0] * classes * classes
    labels, probabilities = predict_probabilities(model, data.val, device=site.device)
    confusion = confusion_matrix(labels, probabilities.argmax(axis=1), labels=range(classes))
    if classes == 2:
        histogram = score_histogram(labels, probabilities[:, 1])
    else:
        histogram = [0] * 2 * SCORE_BINS
    return histogram, confusion.ravel().tolist()


def personalised_model(
    state: State,
    local_batchnorm: State,
    instructions: RoundInstructions,
    site: SiteConfig,
    data: SiteData,
) -> RadiographClassifier | None:
    """The clinic's own version of the global model, or None when the run asks for none.

    FedBN: the global weights with this clinic's own BatchNorm layers. Personalisation (last
    round only): then the head alone fine-tuned on the clinic's training images, the epoch picked
    on its validation split; training mode also re-estimates BatchNorm statistics on them.
    """
    personalise = instructions.personalise_epochs > 0 and instructions.is_last_round
    if not local_batchnorm and not personalise:
        return None
    model = _model(instructions)
    load_into(model, {**state, **local_batchnorm}, "finetune")
    if personalise:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(HEAD_PREFIX))
        settings = _loop_settings(instructions, site) | {"epochs": instructions.personalise_epochs}
        train_classifier(
            model, data.train, data.val if len(data.val) else None, TrainConfig(**settings)
        )
    return model


def evaluate_round(
    state: State,
    instructions: RoundInstructions,
    site: SiteConfig,
    data: SiteData,
    local_batchnorm: State | None = None,
) -> tuple[EvaluateMetrics, GradcamSamples | None]:
    """Score the global model (and the clinic's personalised one, where asked) on local held-out
    images, and its heat maps against lesion masks where those are known; Grad-CAM samples of
    the global model as the policy allows."""
    model = _model(instructions)
    load_into(model, state, "finetune")
    dataset = data.evaluation
    batch_size = max(instructions.batch_size, 64)
    metrics = evaluate_classifier(model, dataset, batch_size=batch_size, device=site.device)
    own = personalised_model(state, local_batchnorm or {}, instructions, site, data)
    personal = (
        evaluate_classifier(own, dataset, batch_size=batch_size, device=site.device)
        if own is not None
        else None
    )
    undefined = [math.nan] * len(instructions.class_names)
    lesions = score_localisation(
        model, dataset, dataset.dataset.masks, batch_size=batch_size, limit=LOCALISATION_IMAGES
    )
    val_histogram, val_confusion = _validation_counts(model, data, instructions, site)
    summary = EvaluateMetrics(
        num_examples=int(metrics["n"]),
        accuracy=float(metrics["accuracy"]),
        balanced_accuracy=float(metrics["balanced_accuracy"]),
        auc=_number(metrics["auc"]),
        loss=float(metrics["loss"]),
        ece=float(metrics["ece"]),
        per_class_recall=_per_class_recall(metrics, instructions.class_names),
        confusion_matrix=[int(v) for row in metrics["confusion_matrix"] for v in row],
        val_score_histogram=val_histogram,
        val_confusion_matrix=val_confusion,
        personalised_accuracy=float(personal["accuracy"]) if personal else math.nan,
        personalised_balanced_accuracy=(
            float(personal["balanced_accuracy"]) if personal else math.nan
        ),
        personalised_per_class_recall=(
            _per_class_recall(personal, instructions.class_names) if personal else undefined
        ),
        localisation_images=lesions.images if lesions else 0,
        pointing_game=lesions.pointing_game if lesions else math.nan,
        energy_in_mask=lesions.energy_inside if lesions else math.nan,
        mask_area=lesions.mask_area if lesions else math.nan,
    )
    samples = None
    per_class, side = sample_limits(site, instructions)
    if site.privacy != "none" and per_class > 0:
        samples = gradcam_samples(
            model, dataset, per_class=per_class, size=side, include_images=site.privacy == "overlay"
        )
    return summary, samples
