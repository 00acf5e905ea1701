"""Evaluation metrics and measured peak memory, as plain JSON-ready numbers.

Scores come from scikit-learn; this module only decides the conventions a clinical report needs:
class 1 is the positive class of a binary task, data classes meet model classes by name (a clinic
may hold only some of them), undefined quantities (recall of a class without images, AUC with a
single class, sensitivity without positives) are `None` with the reason named instead of an
exception or NaN, and the 0.5 rule and a validation-chosen threshold are reported side by side.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from hxr_model.errors import DataError

ECE_BINS = 15
POSITIVE_CLASS = 1
# Binary rates: the first needs images of the positive class, the second of the negative one.
RATE_KEYS = ("sensitivity", "specificity")
_MIB = 1024 * 1024


def _checked(
    labels: np.ndarray, probabilities: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != (labels.size, num_classes):
        raise ValueError(
            f"probabilities must be ({labels.size}, {num_classes}), got {probabilities.shape}"
        )
    if labels.size == 0:
        raise ValueError("metrics need at least one example")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    return labels, probabilities


def predict(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class decisions: binary tasks call the positive class when p >= threshold, others argmax."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[1] == 2:
        return (probabilities[:, POSITIVE_CLASS] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def _sensitivity_specificity(labels: np.ndarray, predictions: np.ndarray) -> tuple[Any, Any]:
    positives = labels == POSITIVE_CLASS
    sensitivity = _rate(int((predictions[positives] == POSITIVE_CLASS).sum()), int(positives.sum()))
    specificity = _rate(
        int((predictions[~positives] != POSITIVE_CLASS).sum()), int((~positives).sum())
    )
    return sensitivity, specificity


def _one_vs_rest_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of one class against the rest, or None when the labels hold only one side."""
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins (lo, hi].

    The confidence is the probability of the predicted class; a bin weighs by its share of the
    examples.
    """
    predictions = predict(probabilities)
    confidence = probabilities[np.arange(labels.size), predictions]
    correct = predictions == labels
    bin_index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = 0.0
    for b in np.unique(bin_index):
        members = bin_index == b
        gap += members.sum() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap / labels.size)


def model_class_indices(
    data_class_names: Sequence[str], model_class_names: Sequence[str]
) -> np.ndarray:
    """Index array: data class id -> model class id, matched by name.

    A clinic's data may hold any subset of the model's classes, in any order; a class the model
    does not know cannot be scored, so it is refused by name.
    """
    positions = {name: index for index, name in enumerate(model_class_names)}
    unknown = [name for name in data_class_names if name not in positions]
    if unknown:
        raise DataError(
            f"the data hold class(es) {', '.join(map(repr, unknown))} that the model does not "
            f"know (its classes: {', '.join(model_class_names)})"
        )
    return np.asarray([positions[name] for name in data_class_names], dtype=np.int64)


def metrics_by_class_name(
    labels: np.ndarray,
    probabilities: np.ndarray,
    data_class_names: Sequence[str],
    model_class_names: Sequence[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """`classification_metrics` for `labels` that index `data_class_names`, a subset of the
    model's classes: the labels are re-indexed by name, the model's full output is scored."""
    mapping = model_class_indices(data_class_names, model_class_names)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= mapping.size):
        raise ValueError(f"labels must lie in 0..{mapping.size - 1}")
    return classification_metrics(mapping[labels], probabilities, model_class_names, threshold)


def _why_undefined(key: str, class_name: str, present: bool) -> str:
    """Why a per-class value has no number: precision needs predictions of the class, recall,
    F1 and AUC need images of it, and AUC needs images of another class too."""
    if key == "precision":
        return f"no image was predicted {class_name}"
    return f"every image is {class_name}" if present else f"no {class_name} images"


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """All reported metrics for one split; every value is a JSON type (float, int, list, None).

    `probabilities` is [N, C] (softmax outputs); `loss` is their mean cross-entropy. A split may
    lack some classes: predictions range over all C classes, but recall, F1 and AUC exist only for
    the classes present (`classes_present`), and balanced accuracy, macro F1 and AUC (one vs rest)
    average over those. Every value left undefined is None, and `undefined` maps its key
    (`auc`, `per_class.NAME.recall`, ...) to the reason. Binary tasks add sensitivity and
    specificity at 0.5 and, when `threshold` is given, the same at that threshold.
    """
    num_classes = len(class_names)
    labels, probabilities = _checked(labels, probabilities, num_classes)
    predictions = predict(probabilities)
    class_ids = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, zero_division=0
    )
    predicted = np.bincount(predictions, minlength=num_classes)
    present = support > 0
    per_class_auc = [_one_vs_rest_auc(labels == c, probabilities[:, c]) for c in class_ids]
    undefined: dict[str, str] = {}
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(class_names):
        entry: dict[str, Any] = {
            "precision": float(precision[c]) if predicted[c] else None,
            "recall": float(recall[c]) if present[c] else None,
            "f1": float(f1[c]) if present[c] else None,
            "support": int(support[c]),
            "auc": per_class_auc[c],
        }
        for key, value in entry.items():
            if value is None:
                undefined[f"per_class.{name}.{key}"] = _why_undefined(key, name, bool(present[c]))
        per_class[name] = entry
    if num_classes == 2:
        auc = per_class_auc[POSITIVE_CLASS]
    else:
        defined = [per_class_auc[c] for c in class_ids if per_class_auc[c] is not None]
        auc = float(np.mean(defined)) if defined else None
    if auc is None:
        undefined["auc"] = "needs images of at least two classes"
    result: dict[str, Any] = {
        "n": int(labels.size),
        "accuracy": float((predictions == labels).mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "auc": auc,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(labels, predictions, labels=class_ids).tolist(),
        "ece": expected_calibration_error(labels, probabilities),
    }
    if num_classes == 2:
        rate_classes = (class_names[POSITIVE_CLASS], class_names[1 - POSITIVE_CLASS])
        rates = {"": predictions}
        if threshold is not None:
            result["threshold"] = float(threshold)
            at_threshold = predict(probabilities, threshold)
            result["accuracy_at_threshold"] = float((at_threshold == labels).mean())
            rates["_at_threshold"] = at_threshold
        for suffix, decisions in rates.items():
            rate_pair = _sensitivity_specificity(labels, decisions)
            for key, value, name in zip(RATE_KEYS, rate_pair, rate_classes, strict=True):
                result[key + suffix] = value
                if value is None:
                    undefined[key + suffix] = f"no {name} images"
    picked = probabilities[np.arange(labels.size), labels]
    result["loss"] = float(-np.log(np.clip(picked, 1e-12, 1)).mean())
    result["classes_present"] = [name for c, name in enumerate(class_names) if present[c]]
    result["undefined"] = undefined
    return result


def youden_threshold(labels: np.ndarray, positive_probabilities: np.ndarray) -> float:
    """The score cut-off (predict positive when p >= t) that maximises TPR - FPR.

    Ties go to the highest such cut-off, the more specific choice. Raises DataError when the
    labels hold only one class, since no ROC curve exists then.
    """
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(positive_probabilities, dtype=np.float64).reshape(-1)
    positives = labels == POSITIVE_CLASS
    if positives.all() or not positives.any():
        raise DataError(
            "cannot choose a decision threshold: the validation labels hold only one class"
        )
    fpr, tpr, thresholds = roc_curve(positives, scores, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


SCORE_BINS = 20


def score_histogram(labels: np.ndarray, positive_probabilities: np.ndarray) -> list[int]:
    """Counts of the positive-class score in SCORE_BINS equal bins over [0, 1], first for the
    negative images, then for the positive ones: enough to choose a threshold on predictions
    pooled across clinics, and no image or per-image score leaves a clinic."""
    labels = np.asarray(labels).reshape(-1)
    bins = np.clip((np.asarray(positive_probabilities) * SCORE_BINS).astype(int), 0, SCORE_BINS - 1)
    counts = [np.bincount(bins[labels == label], minlength=SCORE_BINS) for label in (0, 1)]
    return [int(count) for count in np.concatenate(counts)]


def threshold_from_histogram(histogram: list[int]) -> tuple[float, float, float] | None:
    """(threshold, balanced accuracy there, balanced accuracy at 0.5) for the bin edge that
    maximises balanced accuracy (Youden's J) on pooled score counts; None without both classes.
    Ties go to the edge nearest 0.5."""
    counts = np.asarray(histogram, dtype=np.float64).reshape(2, SCORE_BINS)
    negatives, positives = counts.sum(axis=1)
    if not negatives or not positives:
        return None
    edges = np.arange(SCORE_BINS + 1) / SCORE_BINS
    # Predict positive at score >= edge k: specificity counts negative bins below k.
    specificity = np.concatenate([[0.0], np.cumsum(counts[0])]) / negatives
    sensitivity = 1 - np.concatenate([[0.0], np.cumsum(counts[1])]) / positives
    balanced = (specificity + sensitivity) / 2
    best = max(range(len(edges)), key=lambda k: (balanced[k], -abs(edges[k] - 0.5)))
    return float(edges[best]), float(balanced[best]), float(balanced[SCORE_BINS // 2])


# A threshold is worth moving from 0.5 only for this much balanced accuracy on validation.
MIN_THRESHOLD_GAIN = 0.01


def threshold_choice(histogram: list[int]) -> dict[str, float] | None:
    """The decision threshold score counts support: the best bin edge where it beats 0.5 by
    MIN_THRESHOLD_GAIN of balanced accuracy, else 0.5; with both figures. None without both
    classes."""
    choice = threshold_from_histogram(histogram)
    if choice is None:
        return None
    best, at_best, at_half = choice
    return {
        "threshold": best if at_best >= at_half + MIN_THRESHOLD_GAIN else 0.5,
        "images": float(sum(histogram)),
        "best": best,
        "balanced_accuracy_at_best": at_best,
        "balanced_accuracy_at_0.5": at_half,
    }


def _resident_bytes() -> int | None:
    """Current resident set size from /proc (Linux), or None where /proc is absent."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _max_resident_bytes() -> int:
    """Lifetime peak RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemoryMeter:
    """Measures the memory a block of code needs: `with PeakMemoryMeter(device) as m: ...`.

    CPU: the highest process RSS seen above the RSS at entry, sampled every `interval_s` by a
    background thread (and once more at exit). Without /proc the lifetime peak RSS is used, which
    misses peaks lower than an earlier one. CUDA: the peak bytes allocated by tensors on the
    device since entry, weights already there included.
    """

    def __init__(self, device: torch.device | str = "cpu", interval_s: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self._baseline = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_mb(self) -> float:
        """Peak so far in MiB (final once the block has exited)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / _MIB
        return max(0, self._peak - self._baseline) / _MIB

    def sample(self) -> None:
        """Take one CPU reading now (the thread does this continuously)."""
        current = _resident_bytes()
        self._peak = max(self._peak, _max_resident_bytes() if current is None else current)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakMemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        current = _resident_bytes()
        self._baseline = _max_resident_bytes() if current is None else current
        self._peak = self._baseline
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
