import pytest

from hxr_model.data import load_splits
from hxr_model.distill import DistillConfig
from hxr_model.prewarm import PrewarmConfig
from hxr_model.recipe import fit
from hxr_model.training import TrainConfig

QUIET = {"device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic:60", 32)


def test_prewarmed_recipe_reports_both_phases(splits) -> None:
    outcome = fit("hxr50", splits, TrainConfig(epochs=1, **QUIET), PrewarmConfig(epochs=1, **QUIET))
    report = outcome.report
    assert report["prewarm"]["epochs"] == 1 and len(report["prewarm"]["nt_xent"]) == 1
    assert report["train_images"] == len(splits.train)
    assert report["validation"]["n"] == len(splits.val)
    assert outcome.seconds == pytest.approx(
        report["prewarm"]["seconds"] + report["training"]["seconds"]
    )
    assert outcome.peak_memory_mb == max(
        report["prewarm"]["peak_memory_mb"], report["training"]["peak_memory_mb"]
    )


def test_distilled_recipe_trains_the_teacher_first(splits) -> None:
    outcome = fit(
        "hxr50",
        splits,
        TrainConfig(epochs=1, **QUIET),
        distill_config=DistillConfig(teacher="hxr100"),
    )
    assert outcome.report["teacher"]["model"] == "hxr100"
    assert "prewarm" not in outcome.report
    assert outcome.seconds > outcome.report["training"]["seconds"]
