"""Protections against a hostile clinic, each against the real strategy on the in-process grid:
robust BatchNorm pooling, capped example counts, registered names for unnamed nodes, bounded
error text, and one run per run folder."""

import json
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Error, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from hxr_model.errors import ConfigError
from protocol.arrays import from_record, to_record
from protocol.records import ARRAYS_KEY, METRICS_KEY, SITE_KEY, STATISTICS_ACTION
from protocol.replies import StatisticsMetrics, site_record
from protocol.schedule import MEAN_SUFFIX, VAR_SUFFIX
from server.example_weights import capped_examples
from server.federation import run_federation
from server.recalibration import pool_statistics
from server.run_store import RunStore

from .conftest import SITES, honest_app

Rewrite = Callable[[Message, Message], Message]  # (request, honest reply) -> reply sent


def clinic(name: str, train: Rewrite | None = None, statistics: Rewrite | None = None):
    """An honest clinic's ClientApp under another name, whose train or statistics replies can
    be rewritten; it plays the honest partition its node is given."""
    honest = honest_app()
    app = ClientApp()

    def answer(rewrite: Rewrite | None):
        def handler(message: Message, context) -> Message:
            reply = honest(message, context)
            reply.content[SITE_KEY] = site_record(name)
            return rewrite(message, reply) if rewrite else reply

        return handler

    app.train()(answer(train))
    app.evaluate()(answer(None))
    app.query(STATISTICS_ACTION)(answer(statistics))
    return app


def grid_with(make_grid, *apps: ClientApp, names=None):
    """The two honest clinics plus `apps`, each extra node playing an honest partition."""
    grid = make_grid(*apps, names=names)
    for index, node in enumerate(sorted(grid.contexts)[SITES:]):
        grid.contexts[node].node_config["partition-id"] = index % SITES
    return grid


def records_of(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def lie_about_statistics(mean: float, claimed: int) -> Rewrite:
    def rewrite(message: Message, reply: Message) -> Message:
        measured = from_record(reply.content[ARRAYS_KEY])
        lies = {
            n: np.full_like(a, mean) if n.endswith(MEAN_SUFFIX) else a for n, a in measured.items()
        }
        reply.content[ARRAYS_KEY] = to_record(lies)
        reply.content[METRICS_KEY] = StatisticsMetrics(num_examples=claimed).to_record()
        return reply

    return rewrite


LIE = 30.0


def pooled_means(run_dir) -> list[np.ndarray]:
    state = RunStore(run_dir).load_state().arrays
    return [array for name, array in state.items() if name.endswith(MEAN_SUFFIX)]


@pytest.mark.parametrize(
    ("strategy", "moved"),
    [("fedavg", True), ("fedmedian", False), ("fedtrimmedavg", False), ("krum", False)],
)
def test_under_robust_rules_one_clinic_cannot_set_the_batchnorm_statistics(
    make_grid, make_config, strategy: str, moved: bool
) -> None:
    """Four honest clinics and one whose statistics say every mean is 30 over 10**9 images:
    FedAvg's example-weighted pooling follows it; robust rules pool with equal weights and a
    median (or trimmed mean) and stay near what the honest clinics measured."""
    config = make_config(num_server_rounds=1, prewarm_rounds=0, min_nodes=5, strategy=strategy)
    honest_copies = [clinic(f"copy-{k}") for k in (1, 2)]
    liar = clinic("liar", statistics=lie_about_statistics(LIE, 10**9))
    run_dir = run_federation(grid_with(make_grid, *honest_copies, liar), config, run_id=1)
    record = records_of(run_dir)[0]
    assert "liar" in record["statistics"]  # its statistics were accepted and pooled
    largest = max(float(np.abs(array).max()) for array in pooled_means(run_dir))
    assert (largest > 0.9 * LIE) == moved


def test_robust_pooling_stays_in_the_honest_range_and_keeps_the_spread() -> None:
    honest = [({"bn" + MEAN_SUFFIX: np.array([m]), "bn" + VAR_SUFFIX: np.ones(1)}, 25) for m in
              (-0.06, 0.02, 0.11)]  # fmt: skip
    liar = ({"bn" + MEAN_SUFFIX: np.array([900.0]), "bn" + VAR_SUFFIX: np.ones(1)}, 2**62)
    assert pool_statistics([*honest, liar])["bn" + MEAN_SUFFIX][0] > 899
    for pooling in ("median", "trimmed"):
        robust = pool_statistics([*honest, liar], pooling, trim=0.25)
        assert -0.06 <= robust["bn" + MEAN_SUFFIX][0] <= 0.11
        # The between-site spread stays in the pooled variance: above each site's own variance.
        assert 1.0 < robust["bn" + VAR_SUFFIX][0] < 1.1


def test_no_clinic_weighs_more_than_the_cap_whatever_it_reports() -> None:
    reported = {"north": 100, "south": 120, "east": 110, "liar": 10**9}
    weights = capped_examples(reported, {"east": 50}, cap_factor=4.0)
    assert weights == {"north": 100, "south": 120, "east": 50, "liar": (4 * 115)}


def inflate_examples(message: Message, reply: Message) -> Message:
    metrics = dict(reply.content[METRICS_KEY]) | {"num-examples": 10**9}
    reply.content[METRICS_KEY] = MetricRecord(metrics)
    return reply


def test_an_inflated_example_count_is_capped_in_the_aggregate(make_grid, make_config) -> None:
    config = make_config(num_server_rounds=1, prewarm_rounds=0, min_nodes=3)
    grid = grid_with(make_grid, clinic("liar", train=inflate_examples))
    (record,) = records_of(run_federation(grid, config, run_id=1))
    assert record["train"]["sites"]["liar"]["num-examples"] == 10**9  # as it reported
    counts = [record["train"]["sites"][site]["num-examples"] for site in ("site-1", "site-2")]
    median = float(np.median([*counts, 10**9]))
    assert record["weighted_examples"]["liar"] == int(4 * median) < 10**9
    assert [record["weighted_examples"][site] for site in ("site-1", "site-2")] == counts


def test_an_unregistered_node_cannot_claim_a_registered_clinics_name(
    make_grid, make_config
) -> None:
    config = make_config(num_server_rounds=1, prewarm_rounds=0, min_nodes=3)
    grid = grid_with(make_grid, clinic("site-1"), names={100: "site-1", 101: "site-2"})
    (record,) = records_of(run_federation(grid, config, run_id=1))
    assert sorted(record["train"]["sites"]) == ["site-1", "site-2"]
    assert {item["stage"] for item in record["rejected"]} == {"train", "evaluate"}
    for rejected in record["rejected"]:
        assert rejected["site"] == "node-102" and "registered under no name" in rejected["reason"]


def test_a_clinics_error_text_is_stored_printable_and_short(make_grid, make_config) -> None:
    def fail_loudly(message: Message, reply: Message) -> Message:
        reason = "\x1b[2J\x1b]0;owned\x07" + "x" * 100_000
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(error, reply_to=message)

    config = make_config(num_server_rounds=1, prewarm_rounds=0, min_nodes=3)
    run_dir = run_federation(grid_with(make_grid, clinic("loud", train=fail_loudly)), config, 1)
    (failure,) = records_of(run_dir)[0]["failures"]
    assert len(failure["reason"]) <= 300 and "\x1b" not in failure["reason"]
    assert "\x07" not in (run_dir / "report.html").read_text()


def test_a_run_folder_takes_one_run_at_a_time(make_grid, make_config) -> None:
    config = make_config()
    store = RunStore(config.run_dir(0))
    with store.locked(), pytest.raises(ConfigError, match="in use by another run"):
        run_federation(make_grid(), config, run_id=0)
    assert not store.rounds_path.exists()
