"""A real consortium on loopback: one SuperLink and two clinic SuperNodes as processes, TLS and
SuperNode authentication on, two rounds (one pre-warm, one fine-tune) started with `flwr run`.

Everything a coordinator and two clinics would run, with the commands of docs/consortium.md:
`flower-superlink` with certificates from `server.certificates`, `flwr supernode register`,
`flower-supernode` with a site TOML (see tests/deploy/harness.py). Ports are free ports chosen
now; every process (and the SuperExec / app processes Flower starts under them) is stopped at the
end, also on failure. tests/deploy/test_faults.py kills and stalls clinics of such a consortium.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import Consortium, alive, flower_app, skip_unless_runnable, tiny_run_config

from hxr_model.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
skip_unless_runnable()

CLINICS = ("north", "south")
RUN_SECONDS = 600


def supernode_trying_once(
    consortium: Consortium, name: str, key: Path, *extra: str
) -> subprocess.Popen:
    """A SuperNode that gives up after one failed attempt to connect, so refusals end fast."""
    return consortium.supernode(name, key, *extra, "--max-retries", "1", "--max-wait-time", "10")


def test_an_unregistered_supernode_is_refused(consortium: Consortium) -> None:
    stranger = supernode_trying_once(
        consortium,
        "stranger",
        consortium.certs.supernodes[-1].private_key,
        "--root-certificates",
        str(consortium.certs.ca_certificate),
    )
    assert stranger.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in consortium.processes.log("stranger")
    assert "No SuperNode found with the given public key" in consortium.processes.log("superlink")


def test_a_supernode_without_the_ca_certificate_cannot_connect(consortium: Consortium) -> None:
    # A registered key, so the TLS handshake is the only thing that can stop it.
    no_ca = supernode_trying_once(consortium, "no-ca", consortium.certs.supernodes[0].private_key)
    assert no_ca.wait(timeout=120) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in consortium.processes.log("no-ca")


def test_two_rounds_over_tls_write_the_servers_results(consortium: Consortium) -> None:
    out = consortium.root / "run"
    run_id = consortium.start_run(
        flower_app(consortium.root / "app"),
        tiny_run_config(
            out,
            num_server_rounds=2,
            prewarm_rounds=1,
            gradcam_per_class=1,
            round_timeout=float(RUN_SECONDS),
        ),
    )
    consortium.finish(run_id, RUN_SECONDS)

    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [(record["round"], record["phase"]) for record in rounds] == [
        (1, "prewarm"),
        (2, "finetune"),
    ]
    for record in rounds:
        assert set(record["train"]["sites"]) == set(CLINICS)
        assert not record["rejected"] and not record["failures"]
    assert set(rounds[1]["evaluate"]["sites"]) == set(CLINICS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and set(summary["sites"]) == set(CLINICS)
    loaded = load_checkpoint(out / "global_model.pt")
    assert loaded.class_names == ["normal", "pneumonia"] and loaded.model_name == "hxr50"
    assert (out / "report.html").stat().st_size > 0
    for clinic in CLINICS:
        assert list((out / "gradcam" / clinic).rglob("*.png")), clinic


def test_stopping_leaves_no_process_behind(consortium: Consortium) -> None:
    processes = consortium.processes
    running = processes.tree()
    assert len(running) >= 1 + 2 * len(CLINICS)  # SuperLink, SuperNodes and their SuperExecs
    processes.stop()
    assert not alive(processes.seen)
