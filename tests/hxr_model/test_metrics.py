"""Metrics against values worked out by hand for tiny, deliberately asymmetric examples."""

from __future__ import annotations

import json
import mmap
import time

import numpy as np
import pytest
import torch

from hxr_model.errors import DataError
from hxr_model.metrics import (
    PeakMemoryMeter,
    classification_metrics,
    expected_calibration_error,
    model_class_indices,
    youden_threshold,
)

# Binary: 3 negatives, 5 positives. Positive-class scores chosen off the 1/15 ECE bin edges.
BINARY_LABELS = np.array([0, 0, 0, 1, 1, 1, 1, 1])
BINARY_P1 = np.array([0.10, 0.62, 0.70, 0.95, 0.72, 0.30, 0.85, 0.55])
# At 0.5: predictions 0 1 1 | 1 1 0 1 1 -> TN 1, FP 2, FN 1, TP 4.

# Three classes, six images; predictions 0 1 1 1 2 0.
MULTI_LABELS = np.array([0, 0, 1, 1, 2, 2])
MULTI_PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.30, 0.50, 0.20],
        [0.20, 0.62, 0.18],
        [0.08, 0.62, 0.30],
        [0.20, 0.10, 0.70],
        [0.50, 0.20, 0.30],
    ]
)


def binary_probs() -> np.ndarray:
    return np.stack([1.0 - BINARY_P1, BINARY_P1], axis=1)


def test_binary_metrics_match_hand_computation() -> None:
    m = classification_metrics(BINARY_LABELS, binary_probs(), ["normal", "pneumonia"])

    assert m["n"] == 8
    assert m["confusion_matrix"] == [[1, 2], [1, 4]]
    assert m["accuracy"] == pytest.approx(5 / 8)
    # Recalls 1/3 and 4/5.
    assert m["balanced_accuracy"] == pytest.approx((1 / 3 + 4 / 5) / 2)
    normal, pneumonia = m["per_class"]["normal"], m["per_class"]["pneumonia"]
    assert (normal["precision"], normal["recall"], normal["f1"]) == pytest.approx(
        (1 / 2, 1 / 3, 0.4)
    )
    assert (pneumonia["precision"], pneumonia["recall"], pneumonia["f1"]) == pytest.approx(
        (4 / 6, 4 / 5, 8 / 11)
    )
    assert (normal["support"], pneumonia["support"]) == (3, 5)
    assert m["macro_f1"] == pytest.approx((0.4 + 8 / 11) / 2)
    # 15 positive-negative pairs, 11 ranked correctly (0.3 and 0.55 beat only 0.10).
    assert m["auc"] == pytest.approx(11 / 15)
    assert normal["auc"] == pytest.approx(11 / 15)
    assert m["sensitivity"] == pytest.approx(4 / 5)
    assert m["specificity"] == pytest.approx(1 / 3)
    assert "threshold" not in m


def test_binary_ece_by_hand() -> None:
    # Confidence of the predicted class per bin (lo, hi] of width 1/15:
    # bin 13: 0.90 right | bin 9: 0.62 wrong | bin 10: 0.70 wrong, 0.70 wrong, 0.72 right
    # bin 14: 0.95 right | bin 12: 0.85 right | bin 8: 0.55 right
    bin10 = 3 * abs(1 / 3 - (0.70 + 0.70 + 0.72) / 3)
    expected = (0.10 + 0.62 + bin10 + 0.05 + 0.15 + 0.45) / 8
    m = classification_metrics(BINARY_LABELS, binary_probs(), ["normal", "pneumonia"])
    assert m["ece"] == pytest.approx(expected)
    assert m["ece"] == pytest.approx(0.31125)


def test_ece_is_zero_for_perfectly_calibrated_confidence() -> None:
    labels = np.array([1, 1, 0, 1])  # predicted class 1 at 0.75 confidence, right 3 times of 4
    probabilities = np.tile([0.25, 0.75], (4, 1))
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.0)


def test_threshold_metrics_reported_beside_the_half() -> None:
    m = classification_metrics(
        BINARY_LABELS, binary_probs(), ["normal", "pneumonia"], threshold=0.71
    )
    # p >= 0.71: negatives all below -> specificity 3/3; positives 0.95 0.72 0.85 -> 3/5.
    assert m["threshold"] == 0.71
    assert m["accuracy_at_threshold"] == pytest.approx(6 / 8)
    assert m["sensitivity_at_threshold"] == pytest.approx(3 / 5)
    assert m["specificity_at_threshold"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(5 / 8)  # the 0.5 figures stay as they were


def test_threshold_at_exactly_the_score_counts_as_positive() -> None:
    m = classification_metrics(
        np.array([0, 1]), np.array([[0.5, 0.5], [0.4, 0.6]]), ["neg", "pos"], 0.6
    )
    assert m["accuracy_at_threshold"] == 1.0
    assert m["confusion_matrix"] == [[0, 1], [0, 1]]  # 0.5 itself is positive at 0.5


def test_multiclass_metrics_match_hand_computation() -> None:
    m = classification_metrics(MULTI_LABELS, MULTI_PROBS, ["a", "b", "c"])

    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((1.0, 1 / 2, 2 / 3))
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # One-vs-rest AUCs: a 7/8 (0.3 loses to 0.5), b 8/8, c 7.5/8 (0.3 ties 0.3).
    assert (a["auc"], b["auc"], c["auc"]) == pytest.approx((7 / 8, 1.0, 7.5 / 8))
    assert m["auc"] == pytest.approx((7 / 8 + 1.0 + 7.5 / 8) / 3)
    # Bins: 0.5 wrong x2 | 0.62 right x2 | 0.7 right x2.
    assert m["ece"] == pytest.approx((2 * 0.5 + 2 * 0.38 + 2 * 0.3) / 6)
    assert "sensitivity" not in m
    assert "threshold" not in classification_metrics(
        MULTI_LABELS, MULTI_PROBS, ["a", "b", "c"], 0.3
    )


def test_missing_class_is_left_out_of_the_averages_not_a_crash() -> None:
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    m = classification_metrics(labels, probabilities, ["a", "b", "c"])
    c = m["per_class"]["c"]
    assert (c["support"], c["recall"], c["f1"], c["auc"]) == (0, None, None, None)
    assert c["precision"] == 0.0  # predicted once, wrongly: a defined false alarm
    # One vs rest over a and b only: a ranks 3 of 4 pairs right, b 2.5 of 4 (0.3 ties 0.3).
    assert (m["per_class"]["a"]["auc"], m["per_class"]["b"]["auc"]) == (0.75, 0.625)
    assert m["auc"] == pytest.approx((0.75 + 0.625) / 2)
    # Balanced accuracy averages the recalls of the classes present: (1/2 + 1/2) / 2.
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["classes_present"] == ["a", "b"]
    assert set(m["undefined"]) == {"per_class.c.recall", "per_class.c.f1", "per_class.c.auc"}
    json.dumps(m, allow_nan=False)


# A four-class model scored on a clinic holding two of its classes, listed in its own order.
MODEL_CLASSES = ["normal", "bacterial", "viral", "covid"]
CLINIC_CLASSES = ["covid", "normal"]
CLINIC_LABELS = np.array([0, 0, 0, 1, 1])  # covid x3, normal x2
CLINIC_PROBS = np.array(
    [
        [0.10, 0.10, 0.20, 0.60],  # covid -> covid
        [0.20, 0.50, 0.10, 0.20],  # covid -> bacterial, a class the clinic does not hold
        [0.30, 0.10, 0.10, 0.50],  # covid -> covid
        [0.70, 0.10, 0.10, 0.10],  # normal -> normal
        [0.35, 0.10, 0.10, 0.45],  # normal -> covid
    ]
)


def test_class_subset_matched_by_name_gives_hand_computed_metrics() -> None:
    to_model = model_class_indices(CLINIC_CLASSES, MODEL_CLASSES)
    assert to_model.tolist() == [3, 0]
    m = classification_metrics(to_model[CLINIC_LABELS], CLINIC_PROBS, MODEL_CLASSES)

    assert m["accuracy"] == pytest.approx(3 / 5)
    normal, bacterial, viral, covid = (m["per_class"][name] for name in MODEL_CLASSES)
    assert (covid["recall"], normal["recall"]) == pytest.approx((2 / 3, 1 / 2))
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert (covid["precision"], normal["precision"]) == pytest.approx((2 / 3, 1.0))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    # covid scores 0.6 0.2 0.5 against normal images' 0.1 0.45: 5 of 6 pairs; normal 6 of 6.
    assert (covid["auc"], normal["auc"]) == pytest.approx((5 / 6, 1.0))
    assert m["auc"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert m["confusion_matrix"] == [[1, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 2]]
    assert m["classes_present"] == ["normal", "covid"]
    # Absent classes: no recall, F1 or AUC; a precision only where the model predicted them.
    for absent in (bacterial, viral):
        assert absent["support"] == 0
        assert absent["recall"] is absent["f1"] is absent["auc"] is None
    assert (bacterial["precision"], viral["precision"]) == (0.0, None)
    assert m["undefined"]["per_class.viral.precision"] == "no image was predicted viral"
    assert m["undefined"]["per_class.bacterial.recall"] == "no bacterial images"
    assert "auc" not in m["undefined"] and "per_class.bacterial.precision" not in m["undefined"]
    json.dumps(m, allow_nan=False)


def test_a_clinic_with_one_class_has_no_auc_and_says_why() -> None:
    labels = model_class_indices(["covid"], MODEL_CLASSES)[np.zeros(3, dtype=np.int64)]
    m = classification_metrics(labels, CLINIC_PROBS[:3], MODEL_CLASSES)
    assert m["auc"] is None and m["per_class"]["covid"]["auc"] is None
    assert m["undefined"]["auc"] == "needs images of at least two classes"
    assert m["undefined"]["per_class.covid.auc"] == "every image is covid"
    assert m["balanced_accuracy"] == pytest.approx(2 / 3) == m["per_class"]["covid"]["recall"]


def test_a_class_the_model_does_not_know_is_refused_by_name() -> None:
    with pytest.raises(DataError, match="'pneumothorax'") as refused:
        model_class_indices(["covid", "pneumothorax"], MODEL_CLASSES)
    assert "normal, bacterial, viral, covid" in str(refused.value)


def test_single_class_binary_split_has_undefined_rates_as_none() -> None:
    m = classification_metrics(np.array([1, 1, 1]), np.array([[0.2, 0.8]] * 3), ["neg", "pos"], 0.9)
    assert m["auc"] is None
    assert m["specificity"] is None
    assert m["specificity_at_threshold"] is None
    assert m["sensitivity"] == 1.0
    assert m["sensitivity_at_threshold"] == 0.0
    assert (
        m["undefined"]["specificity"]
        == m["undefined"]["specificity_at_threshold"]
        == ("no neg images")
    )
    assert "sensitivity" not in m["undefined"]
    json.dumps(m, allow_nan=False)


def test_metrics_are_plain_json() -> None:
    m = classification_metrics(BINARY_LABELS, binary_probs(), ["normal", "pneumonia"], 0.5)
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        classification_metrics(np.array([0, 1]), np.ones((3, 2)) / 2, ["neg", "pos"])
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, ["neg", "pos"])


def test_youden_threshold_by_hand() -> None:
    # Cut-offs and TPR - FPR: 0.95 .2 | 0.85 .4 | 0.72 .6 | 0.70 .27 | 0.62 -.07 | 0.55 .13 ...
    assert youden_threshold(BINARY_LABELS, BINARY_P1) == pytest.approx(0.72)


def test_youden_tie_goes_to_the_higher_cutoff() -> None:
    # Cut-off 0.8 gives J = 1/2 - 0 and cut-off 0.4 gives 1 - 1/2: equal, keep the stricter one.
    assert youden_threshold(np.array([0, 1, 0, 1]), np.array([0.2, 0.4, 0.6, 0.8])) == 0.8


def test_youden_needs_both_classes() -> None:
    with pytest.raises(DataError, match="only one class"):
        youden_threshold(np.array([1, 1]), np.array([0.3, 0.9]))


def test_peak_memory_meter_sees_a_50_mb_allocation() -> None:
    # Fresh anonymous pages, written one by one: an allocator (torch's or glibc's) could hand back
    # memory earlier tests freed but the process still holds, which would not raise the RSS.
    size = 50 * 2**20
    with PeakMemoryMeter("cpu") as meter, mmap.mmap(-1, size) as block:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        deadline = time.monotonic() + 10.0  # wait for the sampler, bounded; not a timing check
        while meter.peak_mb < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert 40 <= meter.peak_mb < 200


def test_peak_memory_meter_reports_little_for_idle_code() -> None:
    with PeakMemoryMeter() as meter:
        sum(range(1000))
    assert 0 <= meter.peak_mb < 40


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_meter_on_cuda() -> None:
    with PeakMemoryMeter("cuda") as meter:
        block = torch.ones(50 * 2**20 // 4, device="cuda")
        del block
    assert 50 <= meter.peak_mb < 100
