"""The served round: the last, or the best on the clinics' pooled validation counts, and the
run's model, summary and threshold all read that round."""

import json

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord

from hxr_model.checkpoint import load_checkpoint
from hxr_model.data.phantoms import PHANTOM_CLASSES
from protocol.instructions import RoundInstructions
from protocol.records import CONFIG_KEY, METRICS_KEY
from server.federation import run_federation
from server.model_selection import served_record, validation_balanced_accuracy
from server.round_record import RoundRecord, StageResults
from server.run_config import FederationConfig

from .conftest import SITES, LocalGrid, honest_app

CLASSES = ["a", "b"]


def record(
    server_round: int, *confusions: list[int] | None, phase: str = "finetune"
) -> RoundRecord:
    """A round whose clinics sent these validation confusion matrices (None: no counts)."""
    sites = {
        f"site-{k}": {"accuracy": 0.5} | ({"val-confusion-matrix": c} if c else {})
        for k, c in enumerate(confusions)
    }
    return RoundRecord(round=server_round, phase=phase, evaluate=StageResults(sites=sites))


def config(served_round: str) -> FederationConfig:
    return FederationConfig(classes=CLASSES, served_round=served_round)


def test_validation_balanced_accuracy_is_the_mean_recall_of_the_classes_present() -> None:
    assert validation_balanced_accuracy(record(3, [3, 1, 0, 4]), 2) == pytest.approx(0.875)
    assert validation_balanced_accuracy(record(3, [3, 1, 0, 0]), 2) == pytest.approx(0.75)
    assert validation_balanced_accuracy(record(3, [0, 0, 0, 0]), 2) is None
    assert validation_balanced_accuracy(record(3, None), 2) is None


def test_every_clinic_has_one_vote_however_many_images_it_counts() -> None:
    """A clinic right on its 2 images and one wrong on 10,000: the mean is one half."""
    right, wrong = [1, 0, 0, 1], [0, 5000, 5000, 0]
    assert validation_balanced_accuracy(record(3, right, wrong), 2) == pytest.approx(0.5)
    assert validation_balanced_accuracy(record(3, right, None), 2) == pytest.approx(1.0)


def test_best_validation_serves_the_best_fine_tuning_round_and_the_later_of_a_tie() -> None:
    records = [
        record(1, [4, 0, 0, 4], phase="prewarm"),  # pre-warm rounds are never served
        record(2, [2, 2, 2, 2]),
        record(3, [4, 0, 1, 3]),
        record(4, [3, 1, 0, 4]),
        record(5, [2, 2, 0, 4]),
    ]
    assert served_record(records, config("best-validation")).round == 4  # 0.875, ties round 3
    assert served_record(records, config("last")).round == 5


def test_without_validation_counts_the_last_evaluated_round_is_served() -> None:
    records = [record(2, None), record(3, None)]
    assert served_record(records, config("best-validation")).round == 3


def test_the_run_serves_the_round_its_clinics_validation_scores_best(make_config) -> None:
    """The clinics' counts make round 3 of 4 the best on validation (every image right; the
    others all 'class 0'): global_model.pt is round 3's model and the summary reads round 3."""
    classes = len(PHANTOM_CLASSES)

    def rewriting(honest):
        def app(message: Message, context) -> Message:
            reply = honest(message, context)
            if message.metadata.message_type != MessageType.EVALUATE or reply.has_error():
                return reply
            current = RoundInstructions.from_config(message.content[CONFIG_KEY]).server_round
            counts = np.zeros((classes, classes), dtype=int)
            if current == 3:
                np.fill_diagonal(counts, 2)
            else:
                counts[:, 0] = 2
            metrics = dict(reply.content[METRICS_KEY])
            metrics["val-confusion-matrix"] = counts.ravel().tolist()
            reply.content[METRICS_KEY] = MetricRecord(metrics)
            return reply

        return app

    grid = LocalGrid({100 + k: rewriting(honest_app()) for k in range(SITES)}, SITES)
    run_config = make_config(num_server_rounds=4, served_round="best-validation")
    run_dir = run_federation(grid, run_config, 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_round"] == 3 and summary["served_by"] == "best-validation"
    assert "(round 3: the best on the clinics' validation)" in (run_dir / "report.html").read_text()
    served = load_checkpoint(run_dir / "global_model.pt")
    assert served.metadata["served_round"] == 3 and served.metadata["rounds"] == 4
    third = load_checkpoint(run_dir / "checkpoints" / "round-003.pt").model.state_dict()
    last = load_checkpoint(run_dir / "checkpoints" / "round-004.pt").model.state_dict()
    weights = served.model.state_dict()
    assert all(np.array_equal(weights[name], third[name]) for name in third)
    assert not all(np.array_equal(weights[name], last[name]) for name in last)
