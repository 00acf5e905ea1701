"""`hxr simulate --ray-address`: the same study on an existing Ray cluster, for real.

The test starts a Ray head and a second Ray worker node on loopback (`ray start --block`, one
CPU and a small object store each, each in a process group of its own), runs a short
simulation whose two clinics must land one on each node (read from the process tree: a Ray
actor is a child of its node's raylet, whose socket Ray names for its node ID), and stops
exactly the process groups it started, also on failure. `ray stop` would end every Ray process
on the host, other users' included, and is not used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 80 * 2**20  # Ray's minimum is 75 MiB
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 420
ACTOR_TITLE = "ray::ClientAppActor"
RAY_ENV = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not (BIN / "ray").exists(),
    reason="needs Linux (/proc) and Ray's `ray` command in this environment",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]), command)
    return table


def in_groups(groups: set[int]) -> list[int]:
    return [pid for pid, (_, group, _) in process_table().items() if group in groups]


def stop_groups(groups: set[int]) -> None:
    """SIGTERM the process groups we started, then SIGKILL whatever is left after 30 s."""
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while in_groups(groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in in_groups(groups):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ray_start(arguments: list[str], log: Path) -> subprocess.Popen:
    ports = [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]
    command = [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1"]
    command += ["--num-cpus=1", "--num-gpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}"]
    command += ["--disable-usage-stats", *ports, *arguments]
    with log.open("w") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=RAY_ENV, start_new_session=True
        )


def cluster_nodes(address: str) -> dict[str, str]:
    """Ray's node ID of each raylet socket, once both nodes have joined."""
    script = (
        "import json, time, ray\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "deadline = time.monotonic() + 90\n"
        "while sum(n['Alive'] for n in ray.nodes()) < 2 and time.monotonic() < deadline:\n"
        "    time.sleep(0.5)\n"
        "print(json.dumps({n['RayletSocketName']: n['NodeID'] for n in ray.nodes() if n['Alive']}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=RAY_ENV,
        timeout=START_TIMEOUT_S,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def raylet_nodes(sockets: dict[str, str]) -> dict[int, str]:
    """pid of each raylet -> its Ray node ID (its command line names its socket)."""
    nodes = {}
    for pid, (_, _, command) in process_table().items():
        arguments = command.split(" ")
        if arguments[0].endswith("/raylet"):
            for socket_name, node in sockets.items():
                # Whole arguments: the worker's socket "raylet.1" starts with the head's "raylet".
                if f"--raylet_socket_name={socket_name}" in arguments:
                    nodes[pid] = node
    return nodes


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[int, str]]]:
    """(address, raylet pid -> node ID) of a head and a worker node; stopped afterwards."""
    # A short folder: Ray's Unix socket paths must fit in 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="hxr-ray-", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    head = ray_start(
        [
            "--head",
            f"--port={address.split(':')[1]}",
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={temp_dir}",
        ],
        tmp_path / "head.log",
    )
    groups = {head.pid}
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while head.poll() is None and time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", int(address.split(":")[1]))) == 0:
                    break
            time.sleep(0.5)
        if head.poll() is not None:
            log = (tmp_path / "head.log").read_text()[-600:]
            pytest.skip(f"`ray start --head` cannot run here: {log}")
        worker = ray_start([f"--address={address}"], tmp_path / "worker.log")
        groups.add(worker.pid)
        nodes = raylet_nodes(cluster_nodes(address))
        assert len(set(nodes.values())) == 2, "both raylets must be found"
        yield address, nodes
    finally:
        stop_groups(groups)
        assert in_groups(groups) == [], "Ray processes the test started are still running"
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_study_runs_on_an_existing_two_node_cluster(two_node_cluster, tmp_path: Path) -> None:
    address, raylets = two_node_cluster
    out = tmp_path / "run"
    command = [str(BIN / "hxr"), "simulate", "--ray-address", address, "--out", str(out)]
    command += ["--data", "synthetic:64:2", "--sites", "2", "--rounds", "2", "--prewarm-rounds"]
    command += ["1", "--local-epochs", "1", "--image-size", "32", "--batch-size", "16"]
    command += ["--no-local-baselines"]
    simulation = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    nodes_with_clinics: set[str] = set()
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while simulation.poll() is None and time.monotonic() < deadline:
            for parent, _, command_line in process_table().values():
                if parent in raylets and command_line.startswith(ACTOR_TITLE):
                    nodes_with_clinics.add(raylets[parent])
            time.sleep(0.2)
        output = simulation.communicate(timeout=30)[0].decode()
    finally:
        if simulation.poll() is None:
            simulation.kill()
    assert simulation.returncode == 0, output[-3000:]
    assert nodes_with_clinics == set(raylets.values()), "each node must play a clinic"
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert all(sorted(r["train"]["sites"]) == ["site-1", "site-2"] for r in records)
    assert not any(r["failures"] or r["rejected"] for r in records)
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 2
