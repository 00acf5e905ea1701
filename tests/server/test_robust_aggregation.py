"""The robust option against a poisoning clinic (e.g. one that flips labels): FedMedian."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from protocol.arrays import from_record, to_record
from protocol.records import ARRAYS_KEY, METRICS_KEY
from server.strategy_factory import make_flower_strategy

HONEST = (1.0, 1.1, 0.9, 1.05)
POISONED = 5.0


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("fedavg", np.mean([*HONEST, POISONED])), ("fedmedian", np.median([*HONEST, POISONED]))],
)
def test_fedmedian_keeps_one_poisoning_clinic_out_where_fedavg_follows_it(
    make_grid, make_config, strategy: str, expected: float
) -> None:
    grid = make_grid(*(ClientApp() for _ in range(3)))  # replies are made here, not by apps
    flower_strategy = make_flower_strategy(make_config(strategy=strategy, min_nodes=5))
    sent = {"weight": np.zeros(4, np.float32)}
    messages = list(flower_strategy.configure_train(1, to_record(sent), ConfigRecord(), grid))
    assert len(messages) == 5

    def reply(message: Message, value: float) -> Message:
        content = {
            ARRAYS_KEY: ArrayRecord({"weight": Array(np.full(4, value, np.float32))}),
            METRICS_KEY: MetricRecord({"num-examples": 100}),
        }
        return Message(RecordDict(content), reply_to=message)

    replies = [reply(m, v) for m, v in zip(messages, [*HONEST, POISONED], strict=True)]
    aggregated, _ = flower_strategy.aggregate_train(1, replies)
    assert from_record(aggregated)["weight"] == pytest.approx(np.full(4, expected))
