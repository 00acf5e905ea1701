"""Client sampling: seeded by site name, so a fresh process (new node IDs) draws the same
clinics, and a round trains and evaluates exactly the clinics it drew."""

from __future__ import annotations

import json

import pytest

from client.client_app import build_client_app
from protocol.records import ROLL_CALL_MESSAGE
from server.federation import run_federation
from server.node_sampling import draw_clinics, sample_size

from .conftest import LocalGrid

NAMES = [f"site-{k}" for k in range(1, 11)]
IID = {"data": "synthetic:120:2", "partition": "iid", "seed": 0}


def test_sample_size_follows_fraction_minimum_and_supply() -> None:
    assert sample_size(100, 0.1, 2) == 10
    assert sample_size(10, 0.1, 2) == 2  # the minimum wins over a small fraction
    assert sample_size(3, 0.5, 5) == 3  # never more than are connected
    assert sample_size(100, 0.0, 2) == 0  # fraction 0: no evaluation at all
    assert sample_size(7, 1.0, 2) == 7


def test_the_draw_depends_on_names_and_round_not_on_node_ids() -> None:
    first = {1000 + k: name for k, name in enumerate(NAMES)}
    shuffled = {9_000_000 - 7 * k: name for k, name in enumerate(reversed(NAMES))}

    def names(sites: dict[int, str], server_round: int, stage: str = "train") -> list[str]:
        return [sites[node] for node in draw_clinics(sites, 3, 0, server_round, stage)]

    assert names(first, 4) == names(shuffled, 4)
    assert len(set(names(first, 4))) == 3
    assert len({tuple(names(first, r)) for r in range(1, 9)}) > 1  # rounds draw differently
    assert {tuple(names(first, r)) for r in range(1, 9)} != {
        tuple(names(first, r, "evaluate")) for r in range(1, 9)
    }
    everyone = draw_clinics(first, 10, 0, 1, "train")
    assert [first[node] for node in everyone] == sorted(NAMES)


def run_sampled(make_config, tmp_path, node_ids: list[int], out: str) -> list[dict]:
    apps = {node: build_client_app() for node in node_ids}
    grid = LocalGrid(apps, len(node_ids), run_config=IID)
    config = make_config(
        min_nodes=len(node_ids),
        fraction_train=0.4,
        min_train_nodes=1,
        fraction_evaluate=0.2,
        min_evaluate_nodes=1,
        out_dir=str(tmp_path / out),
    )
    run_dir = run_federation(grid, config, run_id=1)
    return [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]


def test_rounds_take_the_drawn_clinics_and_a_new_process_draws_the_same(
    make_config, tmp_path
) -> None:
    records = run_sampled(make_config, tmp_path, [100, 101, 102, 103, 104], "first")
    expected = {node: f"site-{k + 1}" for k, node in enumerate([100, 101, 102, 103, 104])}
    for record in records:
        drawn = [expected[n] for n in draw_clinics(expected, 2, 0, record["round"], "train")]
        assert sorted(record["train"]["sites"]) == sorted(drawn)
        assert not record["failures"] and not record["rejected"]
    assert len(records[1]["evaluate"]["sites"]) == 1 and records[0]["evaluate"]["sites"] == {}
    # Fresh node IDs in another order, as after a restart: the same clinics train.
    again = run_sampled(make_config, tmp_path, [9_004, 7_003, 8_002, 6_001, 5_000], "again")
    assert [sorted(r["train"]["sites"]) for r in again] == [
        sorted(r["train"]["sites"]) for r in records
    ]
    assert [sorted(r["evaluate"]["sites"]) for r in again] == [
        sorted(r["evaluate"]["sites"]) for r in records
    ]


def test_differential_privacy_refuses_sampling(make_config) -> None:
    with pytest.raises(ValueError, match="fraction-train = 1"):
        make_config(dp_noise_multiplier=1.0, fraction_train=0.5, recalibrate_statistics=False)


class CountingGrid(LocalGrid):
    """Counts the roll-call messages each node is sent."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for message in messages:
            if message.metadata.message_type == ROLL_CALL_MESSAGE:
                node = message.metadata.dst_node_id
                self.roll_calls[node] = self.roll_calls.get(node, 0) + 1
        return super().send_and_receive(messages, timeout=timeout)


def test_a_clinic_that_does_not_answer_the_roll_call_is_asked_once(make_config, tmp_path) -> None:
    honest = build_client_app()

    def nameless(message, context):  # e.g. a clinic on an older protocol
        if message.metadata.message_type == ROLL_CALL_MESSAGE:
            raise RuntimeError("no roll call here")
        return honest(message, context)

    grid = CountingGrid({100: honest, 101: honest, 102: honest, 103: nameless}, 4, run_config=IID)
    grid.roll_calls = {}
    config = make_config(min_nodes=4, fraction_train=0.5, min_train_nodes=1, fraction_evaluate=0.5)
    records = [
        json.loads(line)
        for line in (run_federation(grid, config, run_id=1) / "rounds.jsonl")
        .read_text()
        .splitlines()
    ]
    assert grid.roll_calls == {100: 1, 101: 1, 102: 1, 103: 1}  # 2 rounds, 3 draws: asked once
    assert all(len(record["train"]["sites"]) == 2 for record in records)


def test_no_evaluation_still_recalibrates_the_global_statistics(make_grid, make_config) -> None:
    run_dir = run_federation(make_grid(), make_config(fraction_evaluate=0.0), run_id=1)
    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert records[1]["evaluate"]["sites"] == {}
    assert records[1]["statistics"] == ["site-1", "site-2"]
