"""The BatchNorm recalibration round: the aggregated model's own statistics, pooled.

Statistics averaged from the sites' own models describe features those models made, not the
aggregated model's; under label skew the global model then predicts one class for everything.
So after aggregation the trained sites re-measure BatchNorm statistics for the aggregated
weights (a `query` message) and the server pools them into those of all their images together.

Averaging variances would drop the spread between the sites' means, which is exactly what differs
between clinics; the pooled variance adds it back: Var = E[v_k + m_k^2] - (E[m_k])^2, with the
expectations weighted by each site's number of images.

Under a robust aggregation rule a weighted mean would undo the protection: one clinic claiming
2**62 images, or reporting means of 900, would set the global statistics. There the sites count
equally and the expectations become a coordinate-wise median (or trimmed mean) over sites:
mean = med_k(m_k), Var = med_k(v_k + (m_k - mean)^2), which keeps the between-site spread and
stays within the honest sites' range while they are the majority.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from protocol.arrays import decode_checked, specs_of, to_record
from protocol.records import ARRAYS_KEY, CONFIG_KEY, STATISTICS_MESSAGE
from protocol.replies import ReplyRejected, StatisticsMetrics
from protocol.schedule import MEAN_SUFFIX, VAR_SUFFIX, is_statistic
from server.reply_screening import ReplyScreen, rejection_reason
from server.update_validation import check_update

ArrayDict = dict[str, np.ndarray]


Pooling = Literal["weighted", "median", "trimmed"]


def _robust_centre(values: np.ndarray, pooling: Pooling, trim: float) -> np.ndarray:
    """Per coordinate over sites (axis 0): the median, or the mean after cutting `trim` of the
    sites from each end."""
    if pooling == "median":
        return np.median(values, axis=0)
    cut = int(trim * len(values))
    return np.sort(values, axis=0)[cut : len(values) - cut].mean(axis=0)


def pool_statistics(
    sites: Sequence[tuple[ArrayDict, int]], pooling: Pooling = "weighted", trim: float = 0.2
) -> ArrayDict:
    """`sites`: (running_mean / running_var arrays by name, image count) per site."""
    total = sum(count for _, count in sites)
    weights = np.array([count / total for _, count in sites])[:, None]
    layers = [name[: -len(MEAN_SUFFIX)] for name in sites[0][0] if name.endswith(MEAN_SUFFIX)]
    pooled: ArrayDict = {}
    for layer in layers:
        means = np.stack([arrays[layer + MEAN_SUFFIX] for arrays, _ in sites]).astype(np.float64)
        variances = np.stack([arrays[layer + VAR_SUFFIX] for arrays, _ in sites]).astype(np.float64)
        if pooling == "weighted":
            mean = (weights * means).sum(axis=0)
            variance = (weights * (variances + means * means)).sum(axis=0) - mean * mean
        else:
            mean = _robust_centre(means, pooling, trim)
            variance = _robust_centre(variances + (means - mean) ** 2, pooling, trim)
        dtype = sites[0][0][layer + MEAN_SUFFIX].dtype
        pooled[layer + MEAN_SUFFIX] = mean.astype(dtype)
        pooled[layer + VAR_SUFFIX] = np.maximum(variance, 0.0).astype(dtype)
    return pooled


def recalibrate(
    grid: Grid,
    screen: ReplyScreen,
    classifier: ArrayDict,
    nodes: Sequence[int],
    instructions: ConfigRecord,
    timeout: float,
    max_update_ratio: float,
    on_pooled: Callable[[str], None],
    pooling: Pooling = "weighted",
    trim: float = 0.2,
) -> ArrayDict:
    """Ask `nodes` for BatchNorm statistics of `classifier` and return them pooled (empty when
    the model has no BatchNorm or no site answered usefully). `on_pooled(site)` names each site
    whose statistics were used."""
    reference = {name: array for name, array in classifier.items() if is_statistic(name)}
    if not reference or not nodes:
        return {}
    content = RecordDict({ARRAYS_KEY: to_record(classifier), CONFIG_KEY: instructions})
    messages = [
        Message(content, dst_node_id=node, message_type=STATISTICS_MESSAGE) for node in nodes
    ]
    replies = grid.send_and_receive(screen.sent(messages), timeout=timeout)
    measured = []
    for reply in screen.screen(replies, "statistics", StatisticsMetrics):
        try:
            arrays = reply.message.content.array_records
            if list(arrays) != [ARRAYS_KEY]:
                raise ReplyRejected(f"expected one statistics record '{ARRAYS_KEY}'")
            statistics = decode_checked(arrays[ARRAYS_KEY], specs_of(reference))
            check_update(statistics, reference, max_update_ratio)
        except Exception as error:
            screen.note("rejected", "statistics", reply.site, rejection_reason(error))
            continue
        measured.append((statistics, reply.metrics.num_examples))
        on_pooled(reply.site)
    return pool_statistics(measured, pooling, trim) if measured else {}
