import pytest
import torch

from hxr_model.data import load_splits
from hxr_model.distill import DistillConfig
from hxr_model.models import build_model
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
    assert report["prewarm"]["batch_size"] == report["prewarm"]["chunk_size"] > 1
    assert report["train_images"] == len(splits.train)
    assert report["validation"]["n"] == len(splits.val)
    assert outcome.seconds == pytest.approx(
        report["prewarm"]["seconds"] + report["training"]["seconds"]
    )
    assert outcome.peak_memory_mb == max(
        report["prewarm"]["peak_memory_mb"], report["training"]["peak_memory_mb"]
    )


def test_the_memory_budget_chunks_prewarming_without_shrinking_its_batch(splits) -> None:
    """`hxr train --max-memory-mb` and a clinic's budget reach pre-warming through its config."""
    prewarm = PrewarmConfig(epochs=1, batch_size=32, max_memory_mb=4, **QUIET)
    outcome = fit("hxr50", splits, TrainConfig(epochs=1, **QUIET), prewarm)
    report = outcome.report["prewarm"]
    assert report["batch_size"] == 32 and 1 <= report["chunk_size"] < 32


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


def test_a_trained_teacher_is_reused_as_given(splits) -> None:
    """The frontier trains ResNet-18 once and distils every student from it."""
    teachers = [build_model("hxr100", len(splits.class_names)) for _ in range(2)]
    with torch.no_grad():
        teachers[1].head[1].weight.mul_(-1)
    before = {k: v.clone() for k, v in teachers[0].state_dict().items()}
    students = []
    for teacher in teachers:
        outcome = fit(
            "hxr50",
            splits,
            TrainConfig(epochs=1, seed=0, **QUIET),
            distill_config=DistillConfig(teacher="hxr100"),
            trained_teacher=teacher,
        )
        assert outcome.report["teacher"] == {"model": "hxr100", "reused": True}
        assert outcome.seconds == outcome.report["training"]["seconds"]
        students.append(outcome.model.state_dict())
    assert all(torch.equal(before[k], v) for k, v in teachers[0].state_dict().items())
    # Different teachers, same seed: the students differ only through the teachers' targets.
    assert any(not torch.equal(students[0][k], students[1][k]) for k in students[0])
