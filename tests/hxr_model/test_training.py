import numpy as np
import pytest
import torch

from hxr_model.errors import ConfigError, DivergedModelError
from hxr_model.memory_budget import SAFETY_FACTOR, estimate_training_memory
from hxr_model.metrics import PeakMemoryMeter
from hxr_model.models import build_model
from hxr_model.standardisation import IntensityStandardisation
from hxr_model.training import (
    TrainConfig,
    choose_batch_size,
    class_weights,
    evaluate_classifier,
    proximal_term,
    train_classifier,
)

QUIET = {"device": "cpu", "progress": False}


def test_a_small_model_learns_to_find_bright_squares(make_squares) -> None:
    # 64 px: HybridNet-XR pools to 1/32, so a 32 px image leaves it a single feature pixel.
    train_set, val_set = make_squares(96, 64, seed=1), make_squares(48, 64, seed=2)
    torch.manual_seed(0)
    model = build_model("hxr50", 2)
    # The squares differ from empty images only in absolute brightness, which per-image
    # standardisation removes on purpose (a square becomes the same share of the brightest
    # levels as an empty image's noise).
    model.standardize = IntensityStandardisation(None)
    result = train_classifier(
        model,
        train_set,
        val_set,
        TrainConfig(epochs=10, batch_size=16, learning_rate=5e-3, **QUIET),
    )
    assert result.val_metrics["accuracy"] >= 0.9
    assert result.val_metrics["auc"] >= 0.95
    assert 0.0 <= result.threshold <= 1.0
    assert result.examples == 96 and result.images_per_s > 0
    # The kept weights are the best epoch's: re-evaluating gives the reported figure.
    again = evaluate_classifier(model, val_set, device="cpu", threshold=result.threshold)
    assert again["accuracy"] == pytest.approx(result.val_metrics["accuracy"])


def test_training_is_reproducible_with_a_seed(squares_train) -> None:
    weights = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model("hxr50", 2)
        train_classifier(model, squares_train, None, TrainConfig(epochs=1, batch_size=32, **QUIET))
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_early_stopping_ends_a_run_that_stops_improving(squares_train, squares_val) -> None:
    config = TrainConfig(
        epochs=10,
        learning_rate=1e-8,
        augmentation="none",
        monitor="accuracy",
        early_stopping_patience=1,
        **QUIET,
    )
    result = train_classifier(build_model("hxr50", 2), squares_train, squares_val, config)
    assert len(result.history) < 10
    assert result.best_epoch <= len(result.history) - 1


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights.tolist() == pytest.approx([0.5, 1.5])
    assert class_weights(np.array([0, 0]), 2).tolist() == pytest.approx([1.0, 0.0])


def test_proximal_term_is_the_squared_distance_to_the_reference() -> None:
    model = build_model("hxr50", 2)
    reference = {name: p.detach() + 1.0 for name, p in model.named_parameters()}
    expected = sum(p.numel() for p in model.parameters())
    assert proximal_term(model, reference).item() == pytest.approx(expected, rel=1e-5)


def test_fedprox_keeps_local_weights_closer_to_the_global_model(squares_train) -> None:
    start = build_model("hxr50", 2)
    reference = {name: p.detach().clone() for name, p in start.named_parameters()}
    distances = []
    for mu in (0.0, 10.0):
        model = build_model("hxr50", 2)
        model.load_state_dict(start.state_dict())
        config = TrainConfig(epochs=1, batch_size=16, proximal_mu=mu, **QUIET)
        train_classifier(model, squares_train, None, config, reference_weights=reference)
        distances.append(proximal_term(model, reference).item())
    assert distances[1] < distances[0]


def test_memory_budget_picks_the_largest_batch_that_fits() -> None:
    model = build_model("hxr100", 2)

    def forward(batch: int) -> torch.Tensor:
        return model(torch.rand(batch, 1, 64, 64)).sum()

    estimate = estimate_training_memory(model, forward)
    assert estimate.per_image_mb > 0 and estimate.fixed_mb > 0
    budget = estimate.peak_mb(40) + 0.5 * SAFETY_FACTOR * estimate.per_image_mb
    assert estimate.largest_batch(budget, upper_limit=1000) == 40
    config = TrainConfig(batch_size=512, max_memory_mb=budget, **QUIET)
    assert choose_batch_size(model, 64, config, torch.device("cpu")) == 40
    too_small = TrainConfig(max_memory_mb=estimate.fixed_mb * 0.5, **QUIET)
    with pytest.raises(ConfigError, match="too small"):
        choose_batch_size(model, 64, too_small, torch.device("cpu"))


def test_memory_budget_works_where_the_last_stage_is_one_pixel() -> None:
    """At MedMNIST's 28 px the last stages run on 1 x 1 maps, where BatchNorm in training mode
    refuses a batch of one: the probe batches must not be that small."""
    model = build_model("hxr50", 2)
    config = TrainConfig(batch_size=64, max_memory_mb=4096, **QUIET)
    assert choose_batch_size(model, 28, config, torch.device("cpu")) == 64


def test_measured_training_peak_stays_within_the_budget() -> None:
    model = build_model("hxr100", 2)
    budget_mb = 150.0
    config = TrainConfig(batch_size=4096, max_memory_mb=budget_mb, **QUIET)
    batch = choose_batch_size(model, 96, config, torch.device("cpu"))
    assert batch > 8
    optimizer = torch.optim.AdamW(model.parameters())
    with PeakMemoryMeter("cpu") as meter:
        loss = model(torch.rand(batch, 1, 96, 96)).logsumexp(1).mean()
        loss.backward()
        optimizer.step()
    assert meter.peak_mb <= budget_mb  # the meter's sensitivity is tested in test_metrics


def test_config_rejects_bad_values_naming_the_field() -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=-1)
    with pytest.raises(ValueError, match="imbalance"):
        TrainConfig(imbalance="oversample")


def test_a_one_class_validation_split_gives_no_threshold(squares_train, squares_val) -> None:
    # Label-skewed clinics often validate on one class: training must still finish.
    only_empty = np.flatnonzero(squares_val.labels == 0)
    squares_val.labels = squares_val.labels[only_empty]
    squares_val.images = squares_val.images[only_empty]
    result = train_classifier(
        build_model("hxr50", 2), squares_train, squares_val, TrainConfig(epochs=1, **QUIET)
    )
    assert result.threshold is None
    assert result.val_metrics["n"] == len(only_empty)


def test_a_diverged_model_is_one_clear_error_not_a_metric_crash(squares_val) -> None:
    """Too much privacy noise or too high a rate: NaN weights must not reach the metrics."""
    model = build_model("hxr50", 2)
    with torch.no_grad():
        model.head[1].bias[0] = float("nan")
    with pytest.raises(DivergedModelError, match=f"NaN or infinite for {len(squares_val)} of"):
        evaluate_classifier(model, squares_val, device="cpu")


def test_the_augmentation_preset_is_the_one_configured(squares_train) -> None:
    weights = {}
    for augmentation in ("none", "light", "scanner-shift"):
        torch.manual_seed(0)
        model = build_model("hxr50", 2)
        config = TrainConfig(epochs=1, batch_size=32, augmentation=augmentation, **QUIET)
        train_classifier(model, squares_train, None, config)
        weights[augmentation] = model.head[1].weight.detach()
    assert TrainConfig().augmentation == "scanner-shift"
    assert not torch.equal(weights["none"], weights["light"])
    assert not torch.equal(weights["light"], weights["scanner-shift"])
    with pytest.raises(ValueError, match="augmentation"):
        TrainConfig(augmentation="heavy")
