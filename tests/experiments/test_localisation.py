"""The localisation study on a handful of tiny phantoms: every variant trained, scored, tabled."""

import numpy as np
import pytest

from experiments.localisation import StudySettings, mean_table, run_seed
from hxr_model.data import load_splits


def test_every_variant_is_scored_at_the_rule_stage_and_the_last_stage() -> None:
    settings = StudySettings(
        data="synthetic:90",
        image_size=32,
        epochs=1,
        prewarm_epochs=1,
        teacher_epochs=1,
    )
    rows = run_seed(settings, seed=0)
    assert [row["variant"] for row in rows] == ["teacher", "scratch", "prewarmed", "distilled"]

    test = load_splits(settings.data, settings.image_size, seed=0).test
    lesions = test.masks.reshape(len(test), -1).any(axis=1)
    assert lesions.any() and not lesions.all()  # normal chests are left out
    for row in rows:
        assert 0 <= row["accuracy"] <= 1
        for layer in ("rule", "last"):
            scores = row[layer]
            assert scores["images"] == lesions.sum()
            assert scores["mask_area"] == pytest.approx(test.masks[lesions].mean())
            assert 0 <= scores["pointing_game"] <= 1 and 0 <= scores["energy_inside"] <= 1
    # At 32 px HybridNet-XR's first stage is 4 x 4 and its last 1 x 1.
    student = rows[1]
    assert (student["rule"]["layer"], student["rule"]["cells"]) == ("encoder.stages.0", [4, 4])
    assert (student["last"]["layer"], student["last"]["cells"]) == ("encoder.stages.3", [1, 1])
    assert rows[0]["rule"]["layer"] == "encoder.features.4"  # ResNet-18 after its max-pool

    table = mean_table(rows).splitlines()
    assert len(table) == 1 + 2 * len(rows)
    assert table[1].startswith("scratch") and table[-1].startswith("teacher (resnet18)")
    assert f"{np.mean(rows[1]['rule']['pointing_game']):.3f}" in table[1]
