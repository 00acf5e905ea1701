"""Teacher-led knowledge distillation: the baseline pre-warming is compared against.

A larger teacher, trained first on the same data, supplies temperature-softened targets; the
student learns from them and from the hard labels (Hinton et al., 2015). It exists to reproduce
the paper's comparison, not as the recommended path: it needs the teacher's memory and time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hxr_model.errors import ConfigError
from hxr_model.runtime import resolve_device
from hxr_model.training import (
    LabelledDataset,
    Objective,
    TrainConfig,
    TrainResult,
    class_weights,
    train_classifier,
)


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str = "resnet18"
    temperature: float = Field(4.0, gt=0)
    soft_weight: float = Field(0.7, ge=0, le=1)  # share of the loss from the teacher's targets


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    soft_weight: float,
    hard_class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """soft_weight * T^2 * KL(teacher_T || student_T) + (1 - soft_weight) * CE(student, labels).

    T^2 keeps the soft term's gradients on the same scale as the hard term's for any T.
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, labels, weight=hard_class_weights)
    return soft_weight * temperature**2 * soft + (1 - soft_weight) * hard


def distillation_objective(
    teacher: nn.Module, config: DistillConfig, hard_class_weights: torch.Tensor | None
) -> Objective:
    def objective(student: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(images)
        weights = None if hard_class_weights is None else hard_class_weights.to(images.device)
        return distillation_loss(
            student(images),
            teacher_logits,
            labels,
            config.temperature,
            config.soft_weight,
            weights,
        )

    return objective


def distill_classifier(
    student: nn.Module,
    teacher: nn.Module,
    train_set: LabelledDataset,
    val_set: LabelledDataset | None,
    train_config: TrainConfig,
    distill_config: DistillConfig,
) -> TrainResult:
    """Train `student` in place from an already-trained `teacher` (kept frozen in eval mode)."""
    if train_config.imbalance == "logit-adjusted":
        raise ConfigError("distillation takes imbalance none, class-weights or balanced-sampler")
    teacher.eval().to(resolve_device(train_config.device))
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    weights = None
    if train_config.imbalance == "class-weights":
        weights = class_weights(train_set.labels, len(train_set.class_names))
    objective = distillation_objective(teacher, distill_config, weights)
    return train_classifier(student, train_set, val_set, train_config, objective=objective)
