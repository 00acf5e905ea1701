import math

import numpy as np
import pytest

from client.instructions import EVALUATE_METRICS
from server.update_validation import UpdateRejected, check_metrics, check_update

GLOBAL = {
    "encoder.weight": np.full((2, 3), 0.5, dtype=np.float32),
    "head.bias": np.array([1.0, -1.0], dtype=np.float32),
}


def updated(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {name: array + 0.01 for name, array in GLOBAL.items()} | changes


def test_an_ordinary_update_is_accepted() -> None:
    check_update(updated(), GLOBAL)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (updated(**{"head.bias": np.array([np.nan, 0.0], np.float32)}), "NaN or infinite"),
        (updated(**{"head.bias": np.array([np.inf, 0.0], np.float32)}), "NaN or infinite"),
        (updated(**{"head.bias": np.zeros(3, np.float32)}), "has shape (3,), expected (2,)"),
        ({"encoder.weight": GLOBAL["encoder.weight"]}, "missing 1 weight(s), e.g. 'head.bias'"),
        (updated(**{"head.extra": np.zeros(2, np.float32)}), "unexpected 1 weight(s)"),
        (updated(**{"head.bias": np.array([1, -1], np.int64)}), "expected floating point"),
        ({name: array * 1e6 for name, array in GLOBAL.items()}, "exceeds 10 x global norm"),
    ],
)
def test_broken_or_hostile_updates_are_rejected_with_a_reason(update, reason: str) -> None:
    with pytest.raises(UpdateRejected) as error:
        check_update(update, GLOBAL)
    assert reason in str(error.value)


def test_the_norm_bound_is_relative_to_the_global_model() -> None:
    # ||global|| = sqrt(6 * 0.25 + 2) = sqrt(3.5); moving every weight by 1 gives sqrt(8).
    moved = {name: array + 1.0 for name, array in GLOBAL.items()}
    ratio = math.sqrt(8) / math.sqrt(3.5)
    check_update(moved, GLOBAL, max_update_ratio=ratio * 1.01)
    with pytest.raises(UpdateRejected):
        check_update(moved, GLOBAL, max_update_ratio=ratio * 0.99)


STATISTICS = GLOBAL | {"encoder.bn.running_var": np.ones(4, np.float32)}


def test_batchnorm_statistics_may_move_far_but_not_arbitrarily() -> None:
    moved = updated(**{"encoder.bn.running_var": np.full(4, 14.0, np.float32)})  # 13x its norm
    check_update(moved, STATISTICS)
    blown = updated(**{"encoder.bn.running_var": np.full(4, 1e6, np.float32)})
    with pytest.raises(UpdateRejected, match="BatchNorm statistics update norm"):
        check_update(blown, STATISTICS)
    negative = updated(**{"encoder.bn.running_var": np.full(4, -1.0, np.float32)})
    with pytest.raises(UpdateRejected, match="negative variances"):
        check_update(negative, STATISTICS)


def evaluate_metrics(**changes) -> dict:
    values = {key: 0.5 for key in EVALUATE_METRICS}
    values |= {"num-examples": 10, "per-class-recall": [0.5, 0.5], "confusion-matrix": [1] * 4}
    return values | changes


def test_well_formed_metrics_pass_and_undefined_values_may_be_nan() -> None:
    check_metrics(evaluate_metrics(auc=math.nan), EVALUATE_METRICS, num_classes=2)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        (evaluate_metrics(**{"num-examples": 0}), "positive integer"),
        (evaluate_metrics(**{"num-examples": 2.5}), "positive integer"),
        (evaluate_metrics(accuracy=math.inf), "'accuracy' is infinite"),
        (evaluate_metrics(extra=1.0), "differ in 'extra'"),
        ({k: v for k, v in evaluate_metrics().items() if k != "auc"}, "differ in 'auc'"),
        (evaluate_metrics(**{"per-class-recall": [0.5] * 3}), "has 3 entries"),
    ],
)
def test_malformed_metrics_are_rejected(metrics: dict, reason: str) -> None:
    with pytest.raises(UpdateRejected) as error:
        check_metrics(metrics, EVALUATE_METRICS, num_classes=2)
    assert reason in str(error.value)
