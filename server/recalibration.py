"""The BatchNorm recalibration round: the aggregated model's own statistics, pooled.

Statistics averaged from the sites' own models describe features those models made, not the
aggregated model's; under label skew the global model then predicts one class for everything.
So after aggregation the trained sites re-measure BatchNorm statistics for the aggregated
weights (a `query` message) and the server pools them into those of all their images together.

Averaging variances would drop the spread between the sites' means, which is exactly what differs
between clinics; the pooled variance adds it back: Var = E[v_k + m_k^2] - (E[m_k])^2, with the
expectations weighted by each site's number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def pool_statistics(sites: Sequence[tuple[ArrayDict, int]]) -> ArrayDict:
    """`sites`: (running_mean / running_var arrays by name, image count) per site."""
    total = sum(count for _, count in sites)
    layers = [name[: -len(MEAN_SUFFIX)] for name in sites[0][0] if name.endswith(MEAN_SUFFIX)]
    pooled: ArrayDict = {}
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


def recalibrate(
    grid: Grid,
    screen: ReplyScreen,
    classifier: ArrayDict,
    nodes: Sequence[int],
    instructions: ConfigRecord,
    timeout: float,
    max_update_ratio: float,
    on_pooled: Callable[[str], None],
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
    return pool_statistics(measured) if measured else {}
