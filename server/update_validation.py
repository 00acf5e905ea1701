"""Checks every site's update must pass before it may touch the global model.

A broken laptop (NaN after a diverged step), a client built for another model (keys, shapes) or
a malicious site (a norm blown up to dominate the average) would otherwise poison every clinic's
model. An update is compared with the weights the server sent for that round.

BatchNorm running statistics are bounded on their own, more loosely: they are measurements of a
site's images, not learned weights, and legitimately move by several times their size (measured:
13x in a PneumoniaMNIST fine-tuning round whose learned weights moved 0.4x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from client.instructions import STATISTICS_SUFFIXES, WEIGHT_KEY

DEFAULT_MAX_UPDATE_RATIO = 10.0
STATISTICS_RATIO_FACTOR = 100.0
CLIPPING_RELATIVE_TOLERANCE = 1e-5


class UpdateRejected(Exception):
    """The reason, in words, why one site's update was left out of the round."""


def _norm(arrays: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays.values())))


def check_update(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    max_update_ratio: float = DEFAULT_MAX_UPDATE_RATIO,
    clipping_norm: float | None = None,
) -> None:
    """Raise UpdateRejected unless `update` matches `reference` and stays near it.

    Near means ||update - reference|| <= max_update_ratio * ||reference|| over the learned
    weights (a real local round moves them by a fraction of their size, a scaled or random update
    by far more), and within STATISTICS_RATIO_FACTOR times that bound over BatchNorm statistics.
    Under differential privacy (`clipping_norm`) the whole update must also lie within the
    clipping norm: sites clip their own updates, and one that does not would break the noise's
    calibration and dominate the average.
    """
    missing = sorted(set(reference) - set(update))
    if missing:
        raise UpdateRejected(f"missing {len(missing)} weight(s), e.g. '{missing[0]}'")
    extra = sorted(set(update) - set(reference))
    if extra:
        raise UpdateRejected(f"unexpected {len(extra)} weight(s), e.g. '{extra[0]}'")
    for name, expected in reference.items():
        array = update[name]
        if array.shape != expected.shape:
            raise UpdateRejected(f"'{name}' has shape {array.shape}, expected {expected.shape}")
        if array.dtype.kind != "f":
            raise UpdateRejected(f"'{name}' has dtype {array.dtype}, expected floating point")
        if not np.all(np.isfinite(array)):
            raise UpdateRejected(f"'{name}' contains NaN or infinite values")
        if name.endswith(".running_var") and np.any(array < 0):
            raise UpdateRejected(f"'{name}' holds negative variances")
    statistics = {name for name in reference if name.endswith(STATISTICS_SUFFIXES)}
    for names, ratio, kind in (
        (set(reference) - statistics, max_update_ratio, "weight"),
        (statistics, max_update_ratio * STATISTICS_RATIO_FACTOR, "BatchNorm statistics"),
    ):
        if names:
            _check_distance(update, reference, sorted(names), ratio, kind)
    if clipping_norm is not None:
        _check_clipped(update, reference, clipping_norm)


def _check_distance(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    names: Sequence[str],
    ratio: float,
    kind: str,
) -> None:
    distance = _norm({name: update[name].astype(np.float64) - reference[name] for name in names})
    scale = _norm({name: reference[name] for name in names})
    if distance > ratio * max(scale, 1e-12):
        raise UpdateRejected(
            f"{kind} update norm {distance:.3g} exceeds {ratio:g} x global norm {scale:.3g}"
        )


def _check_clipped(
    update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], clipping_norm: float
) -> None:
    """A clipped update sits exactly on the norm at most, up to float32 rounding of the sum
    `reference + update` the site sends (relative to the weights' own size)."""
    distance = _norm({name: update[name].astype(np.float64) - a for name, a in reference.items()})
    tolerance = CLIPPING_RELATIVE_TOLERANCE * (clipping_norm + _norm(reference))
    if distance > clipping_norm + tolerance:
        raise UpdateRejected(
            f"update norm {distance:.3g} exceeds the clipping norm {clipping_norm:g}"
        )


def check_metrics(
    metrics: Mapping[str, object], expected_keys: Sequence[str], num_classes: int
) -> None:
    """Raise UpdateRejected unless a reply's metrics are the agreed keys with sane values.

    Flower's aggregation would raise on mismatched keys and a negative or zero example count
    would corrupt the weighted average, so both are refused here, per site.
    """
    if set(metrics) != set(expected_keys):
        difference = sorted(set(metrics) ^ set(expected_keys))
        raise UpdateRejected(f"metrics do not match the protocol (differ in '{difference[0]}')")
    weight = metrics[WEIGHT_KEY]
    if not isinstance(weight, int) or weight <= 0:
        raise UpdateRejected(f"'{WEIGHT_KEY}' must be a positive integer, got {weight!r}")
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and math.isinf(v) for v in values):
            raise UpdateRejected(f"metric '{key}' is infinite")
        if isinstance(value, list) and len(value) not in (num_classes, num_classes**2):
            raise UpdateRejected(f"metric '{key}' has {len(value)} entries")
