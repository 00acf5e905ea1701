"""Pooling the sites' BatchNorm statistics into those of all their images together.

Averaging variances would drop the spread between the sites' means, which is exactly what differs
between clinics; the pooled variance adds it back: Var = E[v_k + m_k^2] - (E[m_k])^2, with the
expectations weighted by each site's number of images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MEAN_SUFFIX = ".running_mean"
VAR_SUFFIX = ".running_var"


def pool_statistics(
    sites: Sequence[tuple[dict[str, np.ndarray], int]],
) -> dict[str, np.ndarray]:
    """`sites`: (running_mean / running_var arrays by name, image count) per site."""
    total = sum(count for _, count in sites)
    layers = [name[: -len(MEAN_SUFFIX)] for name in sites[0][0] if name.endswith(MEAN_SUFFIX)]
    pooled: dict[str, np.ndarray] = {}
    for layer in layers:
        means = [arrays[layer + MEAN_SUFFIX].astype(np.float64) for arrays, _ in sites]
        variances = [arrays[layer + VAR_SUFFIX].astype(np.float64) for arrays, _ in sites]
        weights = [count / total for _, count in sites]
        mean = sum(w * m for w, m in zip(weights, means, strict=True))
        second_moment = sum(
            w * (v + m * m) for w, v, m in zip(weights, variances, means, strict=True)
        )
        dtype = sites[0][0][layer + MEAN_SUFFIX].dtype
        pooled[layer + MEAN_SUFFIX] = mean.astype(dtype)
        pooled[layer + VAR_SUFFIX] = np.maximum(second_moment - mean * mean, 0.0).astype(dtype)
    return pooled
