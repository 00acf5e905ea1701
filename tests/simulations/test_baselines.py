from pathlib import Path

import pytest

from client.site_config import simulated_site
from client.site_data import load_site_data
from hxr_model.data import load_splits
from simulations.baselines import ALL_SITES, compare_baselines, weighted_mean
from simulations.federation import SimulationSettings

# The federation's budget, which each baseline trains with: a pre-warm round, then a fine-tuning
# round of one local epoch.
SMALL_BUDGET = {"num_server_rounds": 2, "prewarm_rounds": 1, "local_epochs": 1}


def test_clinic_scores_are_averaged_by_examples() -> None:
    rows = [
        {"num-examples": 10, "accuracy": 0.5, "auc": None},
        {"num-examples": 30, "accuracy": 0.9, "auc": 0.7},
    ]
    mean = weighted_mean(rows)
    assert mean["accuracy"] == pytest.approx(0.8)
    assert mean["auc"] == pytest.approx(0.7)  # undefined at one clinic: the other decides
    assert mean["ece"] is None


def test_centralized_and_local_baselines_are_scored_on_each_clinics_split(tmp_path: Path):
    settings = SimulationSettings(
        data="synthetic:48:2", sites=2, image_size=32, batch_size=16, out=tmp_path, **SMALL_BUDGET
    )
    splits = load_splits(settings.data, settings.image_size, seed=settings.seed)
    results = compare_baselines(settings, splits)
    assert set(results) == {"centralized", "local-only"}
    for table in results.values():
        assert set(table) == {"site-1", "site-2", ALL_SITES}
        for index, name in enumerate(("site-1", "site-2")):
            site = simulated_site(index, 2, settings.data, settings.partition, settings.seed)
            expected = len(load_site_data(site, splits.class_names, 32).evaluation)
            assert table[name]["num-examples"] == expected
            assert 0.0 <= table[name]["accuracy"] <= 1.0
