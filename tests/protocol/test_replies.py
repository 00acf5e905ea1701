"""Typed replies: what a clinic's metrics may hold, and the protocol version every reply names."""

import math

import pytest
from flwr.app import ConfigRecord, RecordDict

from protocol.records import PROTOCOL_VERSION, SITE_KEY
from protocol.replies import (
    EvaluateMetrics,
    FinetuneMetrics,
    ReplyRejected,
    check_protocol_version,
    replying_site,
    site_record,
)


def evaluate_metrics(**changes) -> dict:
    values = {key: 0.5 for key in EvaluateMetrics.names()}
    values |= {"num-examples": 10, "per-class-recall": [0.5, 0.5], "confusion-matrix": [1] * 4}
    values |= {"val-score-histogram": [0] * 40, "personalised-per-class-recall": [0.5, 0.5]}
    values |= {"localisation-images": 0, "val-confusion-matrix": [2] * 4}
    return values | changes


def test_well_formed_metrics_pass_and_undefined_values_may_be_nan() -> None:
    metrics = EvaluateMetrics.parse(evaluate_metrics(auc=math.nan), num_classes=2)
    assert math.isnan(metrics.auc) and metrics.num_examples == 10


def test_metrics_travel_under_their_kebab_case_names_and_come_back_equal() -> None:
    values = {key: 0.25 for key in FinetuneMetrics.names()}
    values |= {"num-examples": 7, "skipped-files": 0, "per-class-recall": [0.5, math.nan]}
    values |= {"local-steps": 2}
    metrics = FinetuneMetrics.parse(values, num_classes=2)
    record = metrics.to_record()
    assert set(record) == set(FinetuneMetrics.names()) and record["val-auc"] == 0.25
    again = FinetuneMetrics.parse(dict(record), num_classes=2)
    assert again.per_class_recall[0] == 0.5 and math.isnan(again.per_class_recall[1])


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        (evaluate_metrics(**{"num-examples": 0}), "'num-examples'"),
        (evaluate_metrics(**{"num-examples": 2.5}), "'num-examples'"),
        (evaluate_metrics(**{"num-examples": 2**62}), "'num-examples'"),
        (evaluate_metrics(accuracy=math.inf), "'accuracy'"),
        (evaluate_metrics(accuracy=3.0), "must lie in [0, 1]"),
        (evaluate_metrics(loss=-math.inf), "not infinite"),
        (evaluate_metrics(accuracy=[0.5, 0.5]), "'accuracy'"),
        (evaluate_metrics(extra=1.0), "'extra'"),
        ({k: v for k, v in evaluate_metrics().items() if k != "auc"}, "'auc'"),
        (evaluate_metrics(**{"per-class-recall": [0.5] * 4}), "must hold 2 values"),
        (evaluate_metrics(**{"confusion-matrix": [1, 1]}), "must hold 4 values"),
        (evaluate_metrics(**{"confusion-matrix": [1, -1, 1, 1]}), "'confusion-matrix.1'"),
        (evaluate_metrics(**{"confusion-matrix": [1.5, 1, 1, 1]}), "'confusion-matrix.0'"),
        (evaluate_metrics(**{"val-score-histogram": [0] * 39}), "must hold 40 counts"),
        (evaluate_metrics(**{"val-confusion-matrix": [1] * 9}), "must hold 4 values"),
    ],
)
def test_malformed_metrics_are_rejected_with_the_field(metrics: dict, reason: str) -> None:
    with pytest.raises(ReplyRejected) as error:
        EvaluateMetrics.parse(metrics, num_classes=2)
    assert reason in str(error.value)


def test_a_reply_of_another_protocol_version_is_rejected() -> None:
    check_protocol_version(RecordDict({SITE_KEY: site_record("north")}))
    older = RecordDict({SITE_KEY: ConfigRecord({"name": "north", "protocol-version": 1})})
    with pytest.raises(ReplyRejected, match=f"version 1, the coordinator {PROTOCOL_VERSION}"):
        check_protocol_version(older)
    unversioned = RecordDict({SITE_KEY: ConfigRecord({"name": "north"})})
    with pytest.raises(ReplyRejected, match="version None"):
        check_protocol_version(unversioned)


def test_only_valid_site_names_are_taken_from_a_reply() -> None:
    assert replying_site(RecordDict({SITE_KEY: site_record("north-1")})) == "north-1"
    for name in ("../etc", "", "a" * 80):
        assert replying_site(RecordDict({SITE_KEY: ConfigRecord({"name": name})})) is None
