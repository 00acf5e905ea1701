"""Checks every site's decoded update must pass before it may touch the global model.

A broken laptop (NaN after a diverged step), a client built for another model (keys, shapes) or
a malicious site (a norm blown up to dominate the average) would otherwise poison every clinic's
model. An update is compared with the weights the server sent for that round; its names,
dtypes and shapes were checked before decoding (`protocol.arrays.decode_checked`).

BatchNorm running statistics are bounded on their own, more loosely: they are measurements of a
site's images, not learned weights, and legitimately move by several times their size (measured:
13x in a PneumoniaMNIST fine-tuning round whose learned weights moved 0.4x).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protocol.replies import ReplyRejected
from protocol.schedule import VAR_SUFFIX, is_statistic

STATISTICS_RATIO_FACTOR = 100.0
CLIPPING_RELATIVE_TOLERANCE = 1e-5


class UpdateRejected(ReplyRejected):
    """The reason, in words, why one site's update was left out of the round."""


def _norm(arrays: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays.values())))


def check_update(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    max_update_ratio: float,
    clipping_norm: float | None = None,
) -> float:
    """Raise UpdateRejected unless `update` (names and shapes as `reference`) stays near it;
    return how far its learned weights moved, relative to their norm (0 when it has none).

    Near means ||update - reference|| <= max_update_ratio * ||reference|| over the learned
    weights (a real local round moves them by a fraction of their size, a scaled or random update
    by far more), and within STATISTICS_RATIO_FACTOR times that bound over BatchNorm statistics.
    Under differential privacy (`clipping_norm`) the whole update must also lie within the
    clipping norm: sites clip their own updates, and one that does not would break the noise's
    calibration and dominate the average.
    """
    for name in reference:
        array = update[name]
        if not np.all(np.isfinite(array)):
            raise UpdateRejected(f"'{name}' contains NaN or infinite values")
        if name.endswith(VAR_SUFFIX) and np.any(array < 0):
            raise UpdateRejected(f"'{name}' holds negative variances")
    statistics = {name for name in reference if is_statistic(name)}
    moved = {}
    for names, ratio, kind in (
        (set(reference) - statistics, max_update_ratio, "weight"),
        (statistics, max_update_ratio * STATISTICS_RATIO_FACTOR, "BatchNorm statistics"),
    ):
        if names:
            moved[kind] = _check_distance(update, reference, sorted(names), ratio, kind)
    if clipping_norm is not None:
        _check_clipped(update, reference, clipping_norm)
    return moved.get("weight", 0.0)


def _check_distance(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    names: Sequence[str],
    ratio: float,
    kind: str,
) -> float:
    """||update - reference|| / ||reference|| over `names`, refused above `ratio`."""
    distance = _norm({name: update[name].astype(np.float64) - reference[name] for name in names})
    scale = max(_norm({name: reference[name] for name in names}), 1e-12)
    if distance > ratio * scale:
        raise UpdateRejected(
            f"{kind} update norm {distance:.3g} exceeds {ratio:g} x global norm {scale:.3g}"
        )
    return distance / scale


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
