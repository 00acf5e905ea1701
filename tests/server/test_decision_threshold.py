"""The federation's threshold comes from score counts pooled over the clinics' validation splits,
and stays at 0.5 unless moving it clearly helps."""

import numpy as np
import pytest

from hxr_model.metrics import SCORE_BINS, score_histogram, threshold_from_histogram
from server.decision_threshold import decision_threshold
from server.round_record import RoundRecord, StageResults
from server.run_config import FederationConfig


def task(*classes: str, **settings) -> FederationConfig:
    """A federation whose clinics train with plain cross-entropy unless `settings` say otherwise:
    the pooled threshold search applies to it."""
    return FederationConfig(classes=list(classes), **({"local_imbalance": "none"} | settings))


def test_scores_are_counted_per_bin_negatives_first() -> None:
    histogram = score_histogram(np.array([0, 0, 1, 1]), np.array([0.01, 0.97, 0.5, 1.0]))
    assert len(histogram) == 2 * SCORE_BINS and sum(histogram) == 4
    assert histogram[0] == 1 and histogram[SCORE_BINS - 1] == 1  # the two negatives
    assert histogram[SCORE_BINS + 10] == 1 and histogram[2 * SCORE_BINS - 1] == 1


def test_the_best_edge_separates_the_pooled_scores() -> None:
    """Negatives score 0.1-0.2, positives 0.3-0.4: any edge between them is perfect; the one
    nearest 0.5 is taken, and 0.5 itself calls every positive negative."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    scores = np.concatenate([rng.uniform(0.1, 0.2, 50), rng.uniform(0.3, 0.4, 50)])
    threshold, at_best, at_half = threshold_from_histogram(score_histogram(labels, scores))
    assert threshold == pytest.approx(0.3) and at_best == 1.0 and at_half == 0.5
    assert threshold_from_histogram(score_histogram(labels[:50], scores[:50])) is None


def record_with(*site_histograms: list[int]) -> RoundRecord:
    sites = {f"site-{k}": {"val-score-histogram": h} for k, h in enumerate(site_histograms)}
    return RoundRecord(round=2, phase="finetune", evaluate=StageResults(sites=sites))


def test_clinics_histograms_are_pooled_before_choosing() -> None:
    """Each clinic alone holds one class (label skew), so none could choose; pooled, they can."""
    negatives = score_histogram(np.zeros(40, int), np.full(40, 0.15))
    positives = score_histogram(np.ones(40, int), np.full(40, 0.35))
    choice = decision_threshold(task("normal", "pneumonia"), [record_with(negatives, positives)])
    assert choice["threshold"] == pytest.approx(0.35)  # the separating edge nearest 0.5
    assert choice["images"] == 80
    assert choice["balanced_accuracy_at_best"] == 1.0 and choice["balanced_accuracy_at_0.5"] == 0.5


def test_0_5_stays_unless_moving_clearly_helps() -> None:
    labels = np.repeat([0, 1], 100)
    scores = np.concatenate([np.full(100, 0.2), np.full(100, 0.8)])
    choice = decision_threshold(task("a", "b"), [record_with(score_histogram(labels, scores))])
    assert choice["threshold"] == 0.5  # 0.5 already separates them
    assert decision_threshold(task("a", "b", "c"), [record_with([0] * 40)]) is None


def test_a_logit_adjusted_federation_keeps_0_5_and_reports_the_search() -> None:
    """Its scores are already for the pooled label share; the search is shown, not applied."""
    negatives = score_histogram(np.zeros(40, int), np.full(40, 0.15))
    positives = score_histogram(np.ones(40, int), np.full(40, 0.35))
    adjusted = task("normal", "pneumonia", local_imbalance="logit-adjusted")
    choice = decision_threshold(adjusted, [record_with(negatives, positives)])
    assert choice["threshold"] == 0.5 and choice["best"] == pytest.approx(0.35)
