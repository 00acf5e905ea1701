import math

import numpy as np
import pytest

from server.update_validation import UpdateRejected, check_update

RATIO = 10.0  # the bound these cases are written for
GLOBAL = {
    "encoder.weight": np.full((2, 3), 0.5, dtype=np.float32),
    "head.bias": np.array([1.0, -1.0], dtype=np.float32),
}


def updated(**changes: np.ndarray) -> dict[str, np.ndarray]:
    return {name: array + 0.01 for name, array in GLOBAL.items()} | changes


def test_an_ordinary_update_is_accepted() -> None:
    check_update(updated(), GLOBAL, RATIO)


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (updated(**{"head.bias": np.array([np.nan, 0.0], np.float32)}), "NaN or infinite"),
        (updated(**{"head.bias": np.array([np.inf, 0.0], np.float32)}), "NaN or infinite"),
        ({name: array * 1e6 for name, array in GLOBAL.items()}, "exceeds 10 x global norm"),
    ],
)
def test_broken_or_hostile_updates_are_rejected_with_a_reason(update, reason: str) -> None:
    with pytest.raises(UpdateRejected) as error:
        check_update(update, GLOBAL, RATIO)
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
    check_update(moved, STATISTICS, RATIO)
    blown = updated(**{"encoder.bn.running_var": np.full(4, 1e6, np.float32)})
    with pytest.raises(UpdateRejected, match="BatchNorm statistics update norm"):
        check_update(blown, STATISTICS, RATIO)
    negative = updated(**{"encoder.bn.running_var": np.full(4, -1.0, np.float32)})
    with pytest.raises(UpdateRejected, match="negative variances"):
        check_update(negative, STATISTICS, RATIO)
