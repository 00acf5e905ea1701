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
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from hxr_model.augment import LIGHT, augment_batch
from hxr_model.errors import DivergedModelError
from hxr_model.memory_budget import batch_size_for_budget
from hxr_model.metrics import PeakMemoryMeter, classification_metrics, youden_threshold
from hxr_model.runtime import (
    OptimizerName,
    ScheduleName,
    autocast_context,
    make_optimizer,
    make_scheduler,
    needs_grad_scaler,
    resolve_device,
    seed_everything,
)

Monitor = Literal["balanced_accuracy", "accuracy", "auc", "loss"]
Imbalance = Literal["none", "class-weights", "balanced-sampler"]


class LabelledDataset(Protocol):
    """What training needs of a dataset: items `(image [1,S,S], label)` and all labels up front."""

    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


class TrainConfig(BaseModel):
    """Supervised training settings; every field can come from the CLI or a run config."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1, le=4096)
    learning_rate: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: OptimizerName = "adamw"
    schedule: ScheduleName = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Plain cross-entropy by default: probabilities stay calibrated and binary decisions use the
    # validation-chosen threshold; weighting or balanced sampling are there for rare classes.
    imbalance: Imbalance = "none"
    early_stopping_patience: int | None = Field(None, ge=1)
    monitor: Monitor = "balanced_accuracy"
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    max_memory_mb: float | None = Field(None, gt=0)
    progress: bool = True
    proximal_mu: float = Field(0.0, ge=0)
    num_workers: int = Field(0, ge=0)


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


def cross_entropy_objective(weights: torch.Tensor | None, label_smoothing: float) -> Objective:
    def objective(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if weights is None else weights.to(images.device)
        return F.cross_entropy(
            model(images), labels, weight=weight, label_smoothing=label_smoothing
        )

    return objective


def proximal_term(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """FedProx: squared distance of the trainable weights to the global model's."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, parameter in model.named_parameters():
        total = total + (parameter - reference[name].to(parameter.device)).pow(2).sum()
    return total


def make_loader(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    num_workers: int = 0,
    sample_weights: np.ndarray | None = None,
) -> DataLoader:
    """Shuffled (or class-balanced) batches; the last partial batch is dropped when it could be a
    single image, which BatchNorm cannot train on."""
    size = len(dataset)
    sampler = None
    if sample_weights is not None:
        sampler = WeightedRandomSampler(
            torch.as_tensor(sample_weights, dtype=torch.double), size, generator=generator
        )
    return DataLoader(
        dataset,
        batch_size=min(batch_size, size),
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=size % min(batch_size, size) == 1,
        num_workers=num_workers,
    )


def choose_batch_size(model: nn.Module, image_size: int, config: TrainConfig, device) -> int:
    if config.max_memory_mb is None:
        return config.batch_size

    def forward(batch: int) -> torch.Tensor:
        return model(torch.rand(batch, 1, image_size, image_size, device=device)).sum()

    return batch_size_for_budget(model, forward, config.max_memory_mb, config.batch_size)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities for every image, in dataset order, and the true labels."""
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
    """All classification metrics plus mean cross-entropy on `dataset`."""
    labels, probabilities = predict_probabilities(model, dataset, batch_size, device)
    return metrics_with_loss(labels, probabilities, dataset.class_names, threshold)


def metrics_with_loss(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    metrics = classification_metrics(labels, probabilities, class_names, threshold)
    picked = probabilities[np.arange(len(labels)), labels]
    metrics["loss"] = float(-np.log(np.clip(picked, 1e-12, 1)).mean())
    return metrics


def _is_better(monitor: Monitor, value: float | None, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best is None
    if best is None:
        return True
    return value < best if monitor == "loss" else value > best


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
        objective = cross_entropy_objective(loss_weights, config.label_smoothing)
    sample_weights = weights.numpy()[labels] if config.imbalance == "balanced-sampler" else None
    image_size = int(train_set[0][0].shape[-1])
    batch_size = choose_batch_size(model, image_size, config, device)
    loader = make_loader(train_set, batch_size, generator, config.num_workers, sample_weights)
    optimizer = make_optimizer(
        [p for p in model.parameters() if p.requires_grad],
        config.optimizer,
        config.learning_rate,
        config.weight_decay,
    )
    scheduler = make_scheduler(
        optimizer, config.schedule, config.learning_rate, config.epochs * len(loader)
    )
    scaler = torch.amp.GradScaler(enabled=needs_grad_scaler(device))
    has_val = val_set is not None and len(val_set) > 0

    history: list[dict[str, float]] = []
    best_value, best_epoch, best_state = None, 0, None
    epochs_without_improvement = 0
    train_seconds, images_seen = 0.0, 0
    started = time.perf_counter()
    with PeakMemoryMeter(device) as memory:
        for epoch in range(1, config.epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            losses = []
            bar = tqdm(
                loader,
                desc=f"epoch {epoch}/{config.epochs}",
                leave=False,
                disable=not config.progress,
            )
            for images, batch_labels in bar:
                images, batch_labels = images.to(device), batch_labels.to(device)
                if config.augment:
                    images = augment_batch(images, LIGHT, generator)
                with autocast_context(device):
                    loss = objective(model, images, batch_labels)
                    if reference_weights is not None and config.proximal_mu > 0:
                        loss = loss + config.proximal_mu / 2 * proximal_term(
                            model, reference_weights
                        )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(loss.item())
                images_seen += len(images)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            train_seconds += time.perf_counter() - epoch_start
            record: dict[str, float] = {"epoch": epoch, "train_loss": float(np.mean(losses))}
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
                value = metrics[config.monitor]
                if _is_better(config.monitor, value, best_value):
                    best_value, best_epoch = value, epoch
                    best_state = copy.deepcopy(model.state_dict())
                    epochs_without_improvement = 0
                else:
                    epochs_without_improvement += 1
            history.append(record)
            if config.progress:
                tqdm.write(_describe_epoch(record, config.epochs))
            if (
                config.early_stopping_patience is not None
                and epochs_without_improvement >= config.early_stopping_patience
            ):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    threshold, val_metrics = None, None
    if has_val:
        val_labels, probabilities = predict_probabilities(model, val_set, device=str(device))
        # A site's validation split may hold one class only (label skew): no threshold then.
        if num_classes == 2 and len(np.unique(val_labels)) == 2:
            threshold = youden_threshold(val_labels, probabilities[:, 1])
        val_metrics = metrics_with_loss(val_labels, probabilities, val_set.class_names, threshold)
    return TrainResult(
        history=history,
        best_epoch=best_epoch if has_val else len(history),
        val_metrics=val_metrics,
        threshold=threshold,
        peak_memory_mb=memory.peak_mb,
        seconds=time.perf_counter() - started,
        images_per_s=images_seen / train_seconds if train_seconds > 0 else 0.0,
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
