"""Faults in a real consortium (SuperLink and three clinic SuperNodes on loopback, TLS and
SuperNode authentication on, see harness.py): a clinic killed in the middle of a round, and a
clinic slower than the round timeout. Neither may stop the federation: the round goes on with
the other clinics, the results name the missing clinic and why, and a killed clinic that comes
back takes part again.

The runs use `fault_injection.py`, the project's ClientApp behind a test-only mod, to hold a
clinic's message while the test acts (kill it, let the timeout pass), so what is tested does not
depend on how fast this machine is.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from harness import (
    Consortium,
    alive,
    flower_app,
    skip_unless_runnable,
    tiny_run_config,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
skip_unless_runnable()

CLINICS = ("north", "south", "east")
RUN_SECONDS = 900
# Long enough for a clinic on a busy 2-core machine to start its ClientApp process and train a
# round on 16 images; the slow clinic's test waits this long once.
ROUND_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def fault_app(consortium: Consortium) -> Path:
    """One bundle for both runs, so the clinics install it once."""
    return flower_app(consortium.root / "app", clientapp="fault_injection:app")


def results(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return rounds, json.loads((out / "summary.json").read_text())


def test_a_clinic_killed_mid_round_is_named_and_rejoins_a_later_round(
    consortium: Consortium, fault_app: Path
) -> None:
    consortium.clear_faults()
    east, north = consortium.fault_dir("east"), consortium.fault_dir("north")
    (east / "train-2.hold").touch()  # east is still training round 2 when it is killed
    (north / "train-3.hold").touch()  # round 3 cannot end before east is back
    out = consortium.root / "killed"
    run_id = consortium.start_run(
        fault_app,
        tiny_run_config(
            out, num_server_rounds=4, prewarm_rounds=3, round_timeout=float(RUN_SECONDS)
        ),
    )

    def server_log() -> str:
        return consortium.run_log(run_id)

    wait_for((east / "train-2.received").exists, RUN_SECONDS, "east in round 2", server_log)
    killed = consortium.processes.kill("east")  # SuperNode, SuperExec and ClientApp at once
    assert len(killed) >= 3 and not alive(killed)
    (east / "train-2.hold").unlink()
    # Round 2 ends once the SuperLink declares east lost (it misses its heartbeats); round 3
    # then starts without it.
    wait_for((north / "train-3.received").exists, RUN_SECONDS, "round 3", server_log)
    consortium.launch_clinic("east")
    consortium.joined("east")
    (north / "train-3.hold").unlink()
    consortium.finish(run_id, RUN_SECONDS)

    rounds, summary = results(out)
    assert [(r["round"], r["phase"]) for r in rounds] == [
        (1, "prewarm"),
        (2, "prewarm"),
        (3, "prewarm"),
        (4, "finetune"),
    ]
    assert set(rounds[0]["train"]["sites"]) == set(CLINICS)
    remaining = {"north", "south"}
    assert set(rounds[1]["train"]["sites"]) == set(rounds[2]["train"]["sites"]) == remaining
    [lost] = rounds[1]["failures"]
    assert (lost["site"], lost["stage"]) == ("east", "train")
    assert "Node Unavailable" in lost["reason"] and "heartbeat" in lost["reason"]
    # Back for the next round that started after it rejoined, in training and evaluation.
    assert set(rounds[3]["train"]["sites"]) == set(rounds[3]["evaluate"]["sites"]) == set(CLINICS)
    assert not rounds[0]["failures"] and not rounds[2]["failures"] and not rounds[3]["failures"]
    assert summary["failures"] == [dict(lost, round=2)]
    assert summary["rounds_completed"] == 4 and set(summary["sites"]) == set(CLINICS)
    # Each round went on from the global weights the round before ended with.
    for before, after in pairwise(rounds):
        assert after["weights_sha256"]["start"] == before["weights_sha256"]["end"]


def test_a_clinic_slower_than_the_round_timeout_does_not_hold_up_the_federation(
    consortium: Consortium, fault_app: Path
) -> None:
    consortium.clear_faults()
    east = consortium.fault_dir("east")
    held = east / "train-1.hold"
    held.touch()  # east gets its message and does not answer while this file exists
    out = consortium.root / "slow"
    run_id = consortium.start_run(
        fault_app,
        tiny_run_config(
            out,
            num_server_rounds=1,
            prewarm_rounds=0,
            fraction_evaluate=0.0,
            round_timeout=ROUND_TIMEOUT,
        ),
    )
    try:
        consortium.finish(run_id, RUN_SECONDS)
        # The whole run ended while east was still holding its message.
        assert (east / "train-1.received").exists() and not (east / "train-1.done").exists()
    finally:
        held.unlink()

    [record], summary = results(out)
    assert set(record["train"]["sites"]) == {"north", "south"}
    # Named although it never replied: by the name its SuperNode was registered under.
    timed_out = {"site": "east", "stage": "train", "reason": "no reply within the round timeout"}
    assert record["failures"] == [timed_out]
    assert summary["failures"] == [dict(timed_out, round=1)]
    assert summary["rounds_completed"] == 1
    assert (out / "global_model.pt").exists()
