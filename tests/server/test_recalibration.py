import numpy as np
import pytest

from server.recalibration import pool_statistics


def site(mean: float, var: float) -> dict[str, np.ndarray]:
    return {
        "bn.running_mean": np.array([mean], np.float32),
        "bn.running_var": np.array([var], np.float32),
    }


def test_pooled_variance_includes_the_spread_between_site_means() -> None:
    # Site A: 10 values with mean 0, variance 1; site B: 30 values with mean 4, variance 2.
    pooled = pool_statistics([(site(0.0, 1.0), 10), (site(4.0, 2.0), 30)])
    mean = (10 * 0.0 + 30 * 4.0) / 40  # 3.0
    second_moment = (10 * (1.0 + 0.0) + 30 * (2.0 + 16.0)) / 40  # 13.75
    assert pooled["bn.running_mean"] == pytest.approx([mean])
    assert pooled["bn.running_var"] == pytest.approx([second_moment - mean**2])  # 4.75, not 1.75
    assert pooled["bn.running_var"].dtype == np.float32


def test_identical_sites_pool_to_themselves() -> None:
    pooled = pool_statistics([(site(1.5, 0.5), 7), (site(1.5, 0.5), 3)])
    assert pooled["bn.running_mean"] == pytest.approx([1.5])
    assert pooled["bn.running_var"] == pytest.approx([0.5])
