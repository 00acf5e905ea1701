"""A real consortium on loopback: one SuperLink and two clinic SuperNodes as processes, TLS and
SuperNode authentication on, two rounds (one pre-warm, one fine-tune) started with `flwr run`.

Everything a coordinator and two clinics would run, with the commands of docs/consortium.md:
`flower-superlink` with certificates from `server.certificates`, `flwr supernode register`,
`flower-supernode` with a site TOML. Ports are free ports chosen now; every process (and the
SuperExec / app processes Flower starts under them) is stopped at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomli_w

from hxr_model.checkpoint import load_checkpoint
from server.certificates import ConsortiumCertificates, generate_certificates

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOOLS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
APP_PACKAGES = ("client", "server", "hxr_model")
CLINICS = ("north", "south")
CONNECTION = "consortium"
IGNORED = shutil.ignore_patterns("__pycache__")
RUN_SECONDS = 600

if not sys.platform.startswith("linux"):
    pytest.skip("process-tree clean-up reads /proc (Linux only)", allow_module_level=True)
if missing := [tool for tool in TOOLS if not (BIN / tool).exists()]:
    pytest.skip(f"Flower's commands missing from {BIN}: {missing}", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies are finished: only reaping is left)."""
    table = _process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


@dataclass
class Processes:
    """The processes this test starts, each with its log; `stop` ends them and their children.

    Flower's SuperLink starts its SuperExec in a new session, so process groups are not enough:
    the whole tree is collected from /proc before anything is signalled (orphans lose their
    parent link), then terminated, then killed if still there.
    """

    logs: Path
    env: dict[str, str]
    started: dict[str, subprocess.Popen] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.logs,
                start_new_session=True,
            )
        self.started[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tree(self) -> set[int]:
        table = _process_table()
        pids = {process.pid for process in self.started.values()}
        while grown := {pid for pid, (parent, _) in table.items() if parent in pids} - pids:
            pids |= grown
        self.seen |= pids
        return pids

    def stop(self) -> None:
        pids = self.tree()
        for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            for pid in alive(pids):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while alive(pids) and time.monotonic() < deadline:
                time.sleep(0.2)
        for process in self.started.values():
            process.wait(timeout=5)


def wait_for(
    condition: Callable[[], bool], seconds: float, what: str, details: Callable[[], str]
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}\n{details()}")
        time.sleep(0.5)


@dataclass
class Consortium:
    root: Path
    certs: ConsortiumCertificates
    port: int
    processes: Processes

    def flwr(self, *args: str, seconds: float = 120) -> subprocess.CompletedProcess[str]:
        """The Flower CLI as the coordinator runs it (connection from $FLWR_HOME/config.toml)."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.processes.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=seconds,
        )

    def supernode(self, name: str, key: Path, *extra: str) -> subprocess.Popen:
        return self.processes.start(
            name,
            [
                str(BIN / "flower-supernode"),
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--auth-supernode-private-key",
                str(key),
                "--port",
                str(free_port()),
                *extra,
            ],
        )


def flower_app(folder: Path) -> Path:
    """The app `flwr run` bundles: our pyproject's project and `tool.flwr` tables and the code.

    A copy, so the bundle holds only the app (`flwr run` packs every .py, .toml, .md and .json
    file of the folder it is given) and nothing can write into the repository (`flwr run`
    rewrites a pyproject.toml holding a legacy `[tool.flwr.federations]` table).
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    flower = {key: value for key, value in project["tool"]["flwr"].items() if key != "federations"}
    config = {"build-system": project["build-system"], "project": project["project"]}
    config["tool"] = {"flwr": flower}
    folder.mkdir()
    (folder / "pyproject.toml").write_text(tomli_w.dumps(config))
    for package in APP_PACKAGES:
        shutil.copytree(REPO / package, folder / package, ignore=IGNORED)
    return folder


def environment(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(root / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HXR_CACHE_DIR": str(root / "cache"),
        # Two clinics and a server share two cores; one thread each avoids oversubscription.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def write_connection(home: Path, port: int, ca: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text(
        tomli_w.dumps(
            {
                "superlink": {
                    "default": CONNECTION,
                    CONNECTION: {"address": f"127.0.0.1:{port}", "root-certificates": str(ca)},
                }
            }
        )
    )


@pytest.fixture(scope="module")
def consortium(
    tmp_path_factory: pytest.TempPathFactory, make_clinic: Callable[..., Path]
) -> Iterator[Consortium]:
    root = tmp_path_factory.mktemp("consortium")
    certs = generate_certificates(root / "certs", len(CLINICS) + 1)
    port = free_port()
    env = environment(root)
    write_connection(Path(env["FLWR_HOME"]), port, certs.ca_certificate)
    (root / "logs").mkdir()
    processes = Processes(root / "logs", env)
    link = Consortium(root, certs, port, processes)
    try:
        superlink = processes.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(certs.ca_certificate),
                "--ssl-certfile",
                str(certs.superlink_certificate),
                "--ssl-keyfile",
                str(certs.superlink_key),
                "--enable-supernode-auth",
                # State in memory, as in docs/consortium.md's rehearsal: with a `--database`
                # file, Flower's SQLite state failed requests with "database is locked" (it waits
                # 5 s for a lock) when we ran this test on 2 cores at a load average of 12.
                "--disable-runtime-dependency-installation",
                "--port",
                str(port),
            ],
        )
        wait_for(
            lambda: superlink.poll() is not None or "Uvicorn running" in processes.log("superlink"),
            120,
            "the SuperLink",
            lambda: processes.log("superlink"),
        )
        assert superlink.poll() is None, processes.log("superlink")
        for index, clinic in enumerate(CLINICS):
            registered = link.flwr(
                "supernode", "register", str(certs.supernodes[index].public_key), CONNECTION
            )
            assert registered.returncode == 0, registered.stdout + registered.stderr
            site = root / f"{clinic}.toml"
            data = make_clinic(root / "data" / clinic, 8, index)
            site.write_text(
                f'name = "{clinic}"\ndata = "folder:{data}"\ndevice = "cpu"\n'
                '[label_map]\nNORMAL = "normal"\nPNEUMONIA = "pneumonia"\n'
            )
            link.supernode(
                clinic,
                certs.supernodes[index].private_key,
                "--root-certificates",
                str(certs.ca_certificate),
                "--node-config",
                f'site-config="{site}"',
            )
        for clinic in CLINICS:
            wait_for(
                lambda clinic=clinic: "SuperNode ID:" in processes.log(clinic),
                120,
                f"SuperNode {clinic} to join",
                lambda clinic=clinic: processes.log(clinic),
            )
        yield link
    finally:
        processes.stop()


def test_an_unregistered_supernode_is_refused(consortium: Consortium) -> None:
    stranger = consortium.supernode(
        "stranger",
        consortium.certs.supernodes[-1].private_key,
        "--root-certificates",
        str(consortium.certs.ca_certificate),
        "--max-retries",
        "1",
        "--max-wait-time",
        "10",
    )
    assert stranger.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in consortium.processes.log("stranger")
    assert "No SuperNode found with the given public key" in consortium.processes.log("superlink")


def test_a_supernode_without_the_ca_certificate_cannot_connect(consortium: Consortium) -> None:
    # A registered key, so the TLS handshake is the only thing that can stop it.
    no_ca = consortium.supernode(
        "no-ca",
        consortium.certs.supernodes[0].private_key,
        "--max-retries",
        "1",
        "--max-wait-time",
        "10",
    )
    assert no_ca.wait(timeout=120) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in consortium.processes.log("no-ca")


def test_two_rounds_over_tls_write_the_servers_results(consortium: Consortium) -> None:
    out = consortium.root / "run"
    overrides = consortium.root / "run-config.toml"
    overrides.write_text(
        tomli_w.dumps(
            {
                "num-server-rounds": 2,
                "prewarm-rounds": 1,
                "local-epochs": 1,
                "prewarm-epochs": 1,
                "model": "hxr50",
                "image-size": 32,
                "batch-size": 8,
                "classes": "normal,pneumonia",
                "min-nodes": 2,
                "gradcam-per-class": 1,
                "round-timeout": float(RUN_SECONDS),
                "out-dir": str(out),
            }
        )
    )
    app = flower_app(consortium.root / "app")
    started = consortium.flwr(
        "run", str(app), CONNECTION, "--run-config", str(overrides), "--format", "json"
    )
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = json.loads(started.stdout)["run-id"]
    # `flwr run --stream` may return before the run ends; the SuperLink logs the end itself.
    finished = re.compile(rf"Finished task \d+ of run {run_id}")
    wait_for(
        lambda: finished.search(consortium.processes.log("superlink")) is not None,
        RUN_SECONDS,
        f"run {run_id} to finish",
        lambda: consortium.flwr("log", run_id, CONNECTION, "--show").stdout,
    )
    status = consortium.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
    run = json.loads(status.stdout)["runs"][0]
    details = consortium.flwr("log", run_id, CONNECTION, "--show").stdout
    assert run["status"] == "finished:completed", details

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
