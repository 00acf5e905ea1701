"""Supervised fine-tuning and evaluation of a `RadiographClassifier`.

One loop serves plain training, federated local training (FedProx term against the global
weights) and knowledge distillation (a different objective), so each idea lives in one place.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.stats import chisquare
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hxr_model.augment import PRESETS, augment_batch
from hxr_model.errors import DivergedModelError
from hxr_model.metrics import classification_metrics, youden_threshold
from hxr_model.runtime import autocast_context, resolve_device, seed_everything
from hxr_model.training_loop import (
    EpochEnd,
    LoopConfig,
    budget_batch_size,
    make_loader,
    run_epochs,
)

Monitor = Literal["balanced_accuracy", "accuracy", "auc", "loss"]
# "logit-adjusted" (Menon et al. 2021; FedLC, Zhang et al. 2022): the training set's log class
# share, less the log of a target share, is added to the logits inside the loss, so the model
# learns the scores of a task with the target's label mix (equal shares: the balanced softmax).
# In a federation it keeps each clinic's own mix out of its update, which plain cross-entropy
# would write into the shared head.
Imbalance = Literal["none", "class-weights", "balanced-sampler", "logit-adjusted"]
# The logit-adjusted loss corrects a label mix only where it differs from the target by more
# than sampling explains: a chi-square goodness-of-fit test of the counts at this level.
MIX_SIGNIFICANCE = 0.01
# A preset of `hxr_model.augment.PRESETS`, or none.
Augmentation = Literal["none", "light", "scanner-shift"]


class LabelledDataset(Protocol):
    """What training needs of a dataset: items `(image [1,S,S], label)` and all labels up front."""

    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


class TrainConfig(LoopConfig):
    """Supervised training settings; every field can come from the CLI or a run config."""

    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Plain cross-entropy by default: probabilities stay calibrated and binary decisions use the
    # validation-chosen threshold; weighting or balanced sampling are there for rare classes.
    imbalance: Imbalance = "none"
    # Logit-adjusted only: the label share the learned scores are for (empty: equal shares). A
    # federation sends its clinics' pooled share, so every clinic learns the pooled task's scores.
    target_class_prior: list[float] = Field(default_factory=list)
    early_stopping_patience: int | None = Field(None, ge=1)
    monitor: Monitor = "balanced_accuracy"
    # "scanner-shift" teaches what the model's standardisation cannot undo of another hospital's
    # images (blur, sharpening, collimation borders, burnt-in text, framing and aspect ratio);
    # "light" is positioning and mild exposure changes only. The difference shows in runs of 40
    # epochs, not of 15.
    augmentation: Augmentation = "scanner-shift"
    proximal_mu: float = Field(0.0, ge=0)
    # FedRS: below 1, the logits of classes absent from `train_set` are scaled by this factor.
    absent_class_scale: float = Field(1.0, ge=0, le=1)
    # With a validation set, return the best epoch's weights (False: the last epoch's, as
    # federated averaging assumes: a label-skewed clinic's validation split would otherwise
    # keep its first epoch and cut its work short every round).
    keep_best_epoch: bool = True


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, Any] | None
    threshold: float | None
    peak_memory_mb: float
    seconds: float
    images_per_s: float
    examples: int
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)


Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


def logit_adjustment(
    labels: np.ndarray, num_classes: int, target_share: list[float]
) -> torch.Tensor | None:
    """Log of each class's share of `labels` less the log of `target_share` (empty: equal
    shares), or None, which keeps plain cross-entropy:
    - where a class is absent: its log share is minus infinity and the adjustment undefined
      (measured on cxr4 by hospital, where each clinic lacks the other's classes: with one image
      per absent class assumed instead, every radiograph came out COVID-19);
    - where the label mix is consistent with the target (`MIX_SIGNIFICANCE`): the offsets would
      be sampling noise, which the demo's nearly balanced phantom clinics paid for in accuracy.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if not counts.all():
        return None
    target = np.asarray(target_share or [1.0 / num_classes] * num_classes, dtype=np.float64)
    if chisquare(counts, target / target.sum() * counts.sum()).pvalue >= MIX_SIGNIFICANCE:
        return None
    return torch.tensor(np.log(counts / counts.sum()) - np.log(target), dtype=torch.float32)


def cross_entropy_objective(
    weights: torch.Tensor | None,
    label_smoothing: float,
    logit_scale: torch.Tensor | None = None,
    logit_offset: torch.Tensor | None = None,
) -> Objective:
    """Cross-entropy, optionally class-weighted; `logit_scale` multiplies each class's logit
    first (FedRS: classes a clinic holds no image of get a factor below 1, so its training does
    not teach the shared model that those classes never occur), then `logit_offset` is added
    (the logit-adjusted loss's `logit_adjustment`)."""

    def objective(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if weights is None else weights.to(images.device)
        logits = model(images)
        if logit_scale is not None:
            logits = logits * logit_scale.to(logits.device)
        if logit_offset is not None:
            logits = logits + logit_offset.to(logits.device)
        return F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)

    return objective


def proximal_term(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """FedProx: squared distance of the trainable weights to the global model's."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, parameter in model.named_parameters():
        total = total + (parameter - reference[name].to(parameter.device)).pow(2).sum()
    return total


def choose_batch_size(
    model: nn.Module, image_size: int, config: TrainConfig, device: torch.device
) -> int:
    """The batch size supervised training of `model` can afford under `config.max_memory_mb`."""
    return budget_batch_size(model, config, image_size, device, lambda images: model(images).sum())


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """The true labels and the softmax probabilities of every image, in dataset order."""
    resolved = resolve_device(device)
    was_training = model.training
    model.eval().to(resolved)
    labels, probabilities = [], []
    for images, batch_labels in DataLoader(dataset, batch_size=batch_size):
        with autocast_context(resolved):
            logits = model(images.to(resolved))
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(torch.as_tensor(batch_labels))
    model.train(was_training)
    stacked = torch.cat(probabilities)
    broken = int((~torch.isfinite(stacked).all(dim=1)).sum()) if len(stacked) else 0
    if broken:
        raise DivergedModelError(
            f"the model's outputs are NaN or infinite for {broken} of {len(stacked)} images: "
            "its weights have diverged"
        )
    return torch.cat(labels).numpy(), stacked.numpy()


def evaluate_classifier(
    model: nn.Module,
    dataset: LabelledDataset,
    *,
    batch_size: int = 256,
    device: str = "auto",
    threshold: float | None = None,
) -> dict[str, Any]:
    """All classification metrics, mean cross-entropy included, on `dataset`."""
    labels, probabilities = predict_probabilities(model, dataset, batch_size, device)
    return classification_metrics(labels, probabilities, dataset.class_names, threshold)


def _is_better(monitor: Monitor, value: float | None, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best is None
    if best is None:
        return True
    return value < best if monitor == "loss" else value > best


class _BestEpoch:
    """Validation bookkeeping of one run: the best monitored value so far, its epoch and weights,
    and how many epochs have passed without beating it (for early stopping)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.value: float | None = None
        self.epoch = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.epochs_without_improvement = 0

    def update(self, epoch: int, value: float | None, model: nn.Module) -> None:
        if _is_better(self.monitor, value, self.value):
            self.value, self.epoch = value, epoch
            self.state = copy.deepcopy(model.state_dict())
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1


def train_classifier(
    model: nn.Module,
    train_set: LabelledDataset,
    val_set: LabelledDataset | None,
    config: TrainConfig,
    *,
    objective: Objective | None = None,
    reference_weights: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train `model` in place; with a validation set the best epoch's weights are kept."""
    if len(train_set) < 2:
        raise ValueError(f"training needs at least 2 images, got {len(train_set)}")
    device = resolve_device(config.device)
    generator = seed_everything(config.seed)
    model.to(device)
    num_classes = len(train_set.class_names)
    labels = np.asarray(train_set.labels)
    weights = class_weights(labels, num_classes)
    if objective is None:
        loss_weights = weights if config.imbalance == "class-weights" else None
        scale = None
        if config.absent_class_scale < 1:
            present = torch.from_numpy(np.bincount(labels, minlength=num_classes) > 0)
            scale = torch.where(present, 1.0, config.absent_class_scale)
        offset = None
        if config.imbalance == "logit-adjusted":
            offset = logit_adjustment(labels, num_classes, config.target_class_prior)
        objective = cross_entropy_objective(loss_weights, config.label_smoothing, scale, offset)
    sample_weights = weights.numpy()[labels] if config.imbalance == "balanced-sampler" else None
    image_size = int(train_set[0][0].shape[-1])
    batch_size = choose_batch_size(model, image_size, config, device)
    loader = make_loader(train_set, batch_size, generator, config.num_workers, sample_weights)
    has_val = val_set is not None and len(val_set) > 0
    history: list[dict[str, float]] = []
    best = _BestEpoch(config.monitor)

    def batch_loss(images: torch.Tensor, batch_labels: torch.Tensor) -> torch.Tensor:
        if config.augmentation != "none":
            images = augment_batch(images, PRESETS[config.augmentation], generator)
        with autocast_context(device):
            loss = objective(model, images, batch_labels)
            if reference_weights is not None and config.proximal_mu > 0:
                loss = loss + config.proximal_mu / 2 * proximal_term(model, reference_weights)
        return loss

    def end_of_epoch(epoch: int, train_loss: float) -> EpochEnd:
        record: dict[str, float] = {"epoch": epoch, "train_loss": train_loss}
        if has_val:
            metrics = evaluate_classifier(
                model, val_set, device=str(device), batch_size=max(batch_size, 64)
            )
            record.update(
                val_loss=metrics["loss"],
                val_accuracy=metrics["accuracy"],
                val_balanced_accuracy=metrics["balanced_accuracy"],
                val_auc=metrics["auc"],
            )
            best.update(epoch, metrics[config.monitor], model)
        history.append(record)
        patience = config.early_stopping_patience
        stop = patience is not None and best.epochs_without_improvement >= patience
        return EpochEnd(_describe_epoch(record, config.epochs), stop)

    # Validation (evaluate_classifier) puts the model back in training mode after each epoch.
    model.train()
    started = time.perf_counter()
    trainable = [p for p in model.parameters() if p.requires_grad]
    outcome = run_epochs(config, trainable, loader, device, batch_loss, end_of_epoch, name="epoch")
    if best.state is not None and config.keep_best_epoch:
        model.load_state_dict(best.state)
    threshold, val_metrics = None, None
    if has_val:
        val_labels, probabilities = predict_probabilities(model, val_set, device=str(device))
        # A site's validation split may hold one class only (label skew): no threshold then.
        if num_classes == 2 and len(np.unique(val_labels)) == 2:
            threshold = youden_threshold(val_labels, probabilities[:, 1])
        val_metrics = classification_metrics(
            val_labels, probabilities, val_set.class_names, threshold
        )
    return TrainResult(
        history=history,
        best_epoch=best.epoch if has_val and config.keep_best_epoch else len(history),
        val_metrics=val_metrics,
        threshold=threshold,
        peak_memory_mb=outcome.peak_memory_mb,
        seconds=time.perf_counter() - started,
        images_per_s=outcome.images_per_s,
        examples=len(train_set),
        batch_size=batch_size,
    )


def _describe_epoch(record: Mapping[str, float], epochs: int) -> str:
    text = f"epoch {int(record['epoch'])}/{epochs}  loss {record['train_loss']:.4f}"
    if "val_accuracy" in record:
        auc = record["val_auc"]
        auc_text = "n/a" if auc is None else f"{auc:.4f}"
        text += (
            f"  val loss {record['val_loss']:.4f}  acc {record['val_accuracy']:.4f}"
            f"  bal-acc {record['val_balanced_accuracy']:.4f}  auc {auc_text}"
        )
    return text
