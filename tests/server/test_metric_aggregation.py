import math

import pytest

from server.metric_aggregation import combine_metrics


def test_weighted_means_skip_undefined_values_and_counts_are_summed() -> None:
    combined = combine_metrics(
        [
            {
                "num-examples": 10,
                "accuracy": 0.5,
                "auc": math.nan,
                "recall": [1.0, math.nan],
                "confusion-matrix": [1, 2, 3, 4],
            },
            {
                "num-examples": 30,
                "accuracy": 0.9,
                "auc": 0.8,
                "recall": [0.0, 0.6],
                "confusion-matrix": [10, 0, 0, 10],
            },
        ],
        "num-examples",
    )
    assert combined["num-examples"] == 40
    assert combined["accuracy"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40)
    assert combined["auc"] == pytest.approx(0.8)
    assert combined["recall"] == pytest.approx([10 / 40, 0.6])
    assert combined["confusion-matrix"] == [11, 2, 3, 14]


def test_a_metric_undefined_everywhere_stays_undefined() -> None:
    combined = combine_metrics(
        [{"num-examples": 1, "auc": math.nan}, {"num-examples": 2, "auc": math.nan}],
        "num-examples",
    )
    assert math.isnan(combined["auc"])
