import math

import pytest
import torch

from hxr_model.distill import DistillConfig, distill_classifier, distillation_loss
from hxr_model.models import build_model
from hxr_model.standardisation import IntensityStandardisation
from hxr_model.training import TrainConfig, evaluate_classifier, train_classifier


def test_distillation_loss_matches_hand_computed_kl_and_ce() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # teacher probabilities 0.75 / 0.25
    labels = torch.tensor([0])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = math.log(2.0)
    loss = distillation_loss(student, teacher, labels, temperature=1.0, soft_weight=0.7)
    assert loss.item() == pytest.approx(0.7 * kl + 0.3 * ce)
    # Identical logits leave only the hard-label term.
    same = distillation_loss(teacher, teacher, labels, temperature=4.0, soft_weight=0.5)
    hard = torch.nn.functional.cross_entropy(teacher, labels)
    assert same.item() == pytest.approx(0.5 * hard.item())


def test_a_student_learns_from_a_trained_teacher(squares_train, squares_val) -> None:
    torch.manual_seed(0)
    config = TrainConfig(
        epochs=12, batch_size=16, learning_rate=5e-3, augmentation="light", device="cpu",
        progress=False,
    )  # fmt: skip
    # The squares differ from empty images only in brightness, which standardisation removes.
    teacher, student = build_model("hxr100", 2), build_model("hxr50", 2)
    for model in (teacher, student):
        model.standardize = IntensityStandardisation(None)
    train_classifier(teacher, squares_train, squares_val, config)
    distill_classifier(student, teacher, squares_train, squares_val, config, DistillConfig())
    assert evaluate_classifier(student, squares_val, device="cpu")["accuracy"] >= 0.85
    assert not any(p.requires_grad for p in teacher.parameters())
