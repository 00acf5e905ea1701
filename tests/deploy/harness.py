"""Real Flower processes for the deployment tests: a SuperLink and clinic SuperNodes on loopback,
with TLS and SuperNode authentication, driven with the commands of docs/consortium.md.

Also the process bookkeeping every real-process test needs: starting commands with logs, finding
everything they started (Flower's SuperExec and app processes, Ray's daemons) and checking that
none outlives a kill or a stop. Tests run in pytest's importlib mode, so tests/deploy/conftest.py
registers this module as `harness` and tests elsewhere load it by path.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from server.certificates import ConsortiumCertificates, generate_certificates

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOOLS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr")
APP_PACKAGES = ("protocol", "client", "server", "hxr_model")
CONNECTION = "consortium"
IGNORED = shutil.ignore_patterns("__pycache__")
# The test-only ClientApp (the project's, behind a mod that can hold a message at a site).
FAULT_INJECTION = Path(__file__).with_name("fault_injection.py")
JOIN_SECONDS = 180


def skip_unless_runnable() -> None:
    """Skip the calling test module where these processes cannot run or be cleaned up."""
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


def descendants(roots: set[int]) -> set[int]:
    """`roots` and every process below them now."""
    table = _process_table()
    pids = set(roots)
    while grown := {pid for pid, (parent, _) in table.items() if parent in pids} - pids:
        pids |= grown
    return pids


def wait_for(
    condition: Callable[[], bool],
    seconds: float,
    what: str,
    details: Callable[[], str],
    poll: float = 0.5,
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}\n{details()}")
        time.sleep(poll)


def _signal_all(pids: set[int], sig: signal.Signals, grace: float) -> None:
    for pid in alive(pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)


@dataclass
class Processes:
    """The processes a test starts, each with its log; `stop` ends them and their children.

    Flower's SuperLink starts its SuperExec in a new session, so process groups are not enough:
    the whole tree is collected from /proc before anything is signalled (orphans lose their
    parent link), then terminated, then killed if still there. `seen` keeps every process ever
    found in a tree, so a test can check that none is left.
    """

    logs: Path
    env: dict[str, str]
    started: dict[str, subprocess.Popen] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def start(self, name: str, args: Sequence[str]) -> subprocess.Popen:
        """Start `args` in a new session; a restart under the same name starts a fresh log."""
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

    def tree(self, names: Sequence[str] | None = None) -> set[int]:
        """The processes under `names` (default: all started), remembered in `seen`. Ended ones
        are left out: their IDs may already belong to someone else's process."""
        chosen = self.started if names is None else {name: self.started[name] for name in names}
        pids = descendants({process.pid for process in chosen.values() if process.poll() is None})
        self.seen |= pids
        return pids

    def kill(self, name: str) -> set[int]:
        """SIGKILL `name` and everything under it at once, as a power cut would; returns them."""
        pids = self.tree([name])
        _signal_all(pids, signal.SIGKILL, 10.0)
        self.started[name].wait(timeout=5)
        return pids

    def stop(self) -> None:
        pids = self.tree()
        _signal_all(pids, signal.SIGTERM, 15.0)
        _signal_all(pids, signal.SIGKILL, 5.0)
        for process in self.started.values():
            process.wait(timeout=5)


def flower_app(folder: Path, clientapp: str | None = None) -> Path:
    """The app `flwr run` bundles: our pyproject's project and `tool.flwr` tables and the code.

    A copy, so the bundle holds only the app (`flwr run` packs every .py, .toml, .md and .json
    file of the folder it is given) and nothing can write into the repository (`flwr run`
    rewrites a pyproject.toml holding a legacy `[tool.flwr.federations]` table). With
    `clientapp` ("fault_injection:app"), the bundle also holds the test-only fault injection
    and its sites run that ClientApp instead.
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    flower = {key: value for key, value in project["tool"]["flwr"].items() if key != "federations"}
    config = {"build-system": project["build-system"], "project": project["project"]}
    config["tool"] = {"flwr": flower}
    folder.mkdir()
    if clientapp is not None:
        flower["app"]["components"]["clientapp"] = clientapp
        shutil.copy(FAULT_INJECTION, folder)
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
        "RAY_USAGE_STATS_ENABLED": "0",
        "HXR_CACHE_DIR": str(root / "cache"),
        # Clinics and a server share two cores; one thread each avoids oversubscription.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def tiny_run_config(out: Path, **settings: Any) -> dict[str, Any]:
    """Tiny rounds (32 px, 16 images a clinic), two clinics suffice, no Grad-CAM;
    `settings` (snake_case) add or override run-config keys."""
    return {
        "local-epochs": 1,
        "prewarm-epochs": 1,
        "model": "hxr50",
        "image-size": 32,
        "batch-size": 8,
        "classes": "normal,pneumonia",
        "min-nodes": 2,
        "gradcam-per-class": 0,
        "out-dir": str(out),
        **{key.replace("_", "-"): value for key, value in settings.items()},
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


@dataclass
class Consortium:
    """A running SuperLink and its clinics; clinic k uses supernode key k (the last key is
    never registered). Each clinic's SuperNode has a fault folder for `fault_injection`."""

    root: Path
    certs: ConsortiumCertificates
    port: int
    processes: Processes
    clinics: tuple[str, ...]

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

    def fault_dir(self, clinic: str) -> Path:
        return self.root / "faults" / clinic

    def clear_faults(self) -> None:
        """Forget the markers and holds of earlier runs (their file names repeat per run)."""
        for clinic in self.clinics:
            for marker in self.fault_dir(clinic).iterdir():
                marker.unlink()

    def launch_clinic(self, clinic: str) -> None:
        """Start (or restart) a registered clinic's SuperNode; see `joined`."""
        index = self.clinics.index(clinic)
        node_config = f'site-config="{self.root / f"{clinic}.toml"}" '
        node_config += f'fault-dir="{self.fault_dir(clinic)}"'
        self.supernode(
            clinic,
            self.certs.supernodes[index].private_key,
            "--root-certificates",
            str(self.certs.ca_certificate),
            "--node-config",
            node_config,
        )

    def joined(self, clinic: str) -> None:
        """Wait until the SuperLink admitted the clinic's SuperNode."""
        wait_for(
            lambda: "SuperNode ID:" in self.processes.log(clinic),
            JOIN_SECONDS,
            f"SuperNode {clinic} to join",
            lambda: self.processes.log(clinic),
        )

    def start_run(self, app: Path, run_config: Mapping[str, Any]) -> str:
        """`flwr run` with `run_config` as `--run-config` overrides; returns the run ID."""
        overrides = self.root / f"run-config-{len(list(self.root.glob('run-config-*')))}.toml"
        overrides.write_text(tomli_w.dumps(dict(run_config)))
        started = self.flwr(
            "run", str(app), CONNECTION, "--run-config", str(overrides), "--format", "json"
        )
        assert started.returncode == 0, started.stdout + started.stderr
        return json.loads(started.stdout)["run-id"]

    def run_log(self, run_id: str) -> str:
        """What the ServerApp of the run logged so far."""
        return self.flwr("log", run_id, CONNECTION, "--show").stdout

    def finish(self, run_id: str, seconds: float) -> None:
        """Wait for the run to end; fails with the ServerApp's log unless it completed."""
        # `flwr run --stream` may return before the run ends; the SuperLink logs the end itself.
        finished = re.compile(rf"Finished task \d+ of run {run_id}")
        wait_for(
            lambda: finished.search(self.processes.log("superlink")) is not None,
            seconds,
            f"run {run_id} to finish",
            lambda: self.run_log(run_id),
        )
        status = self.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
        run = json.loads(status.stdout)["runs"][0]
        assert run["status"] == "finished:completed", self.run_log(run_id)


@contextlib.contextmanager
def running_consortium(
    root: Path, clinics: Sequence[str], make_clinic: Callable[..., Path]
) -> Iterator[Consortium]:
    """A SuperLink with `clinics` registered under their names and joined, each holding a tiny
    two-class image folder; everything it started is stopped on exit, also on failure."""
    certs = generate_certificates(root / "certs", len(clinics) + 1)
    port = free_port()
    env = environment(root)
    write_connection(Path(env["FLWR_HOME"]), port, certs.ca_certificate)
    (root / "logs").mkdir()
    processes = Processes(root / "logs", env)
    link = Consortium(root, certs, port, processes, tuple(clinics))
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
        for index, clinic in enumerate(clinics):
            # Registered under the site's name, so the server can name a site that never replied.
            key = str(certs.supernodes[index].public_key)
            registered = link.flwr("supernode", "register", key, CONNECTION, "--name", clinic)
            assert registered.returncode == 0, registered.stdout + registered.stderr
            data = make_clinic(root / "data" / clinic, 8, index)
            (root / f"{clinic}.toml").write_text(
                f'name = "{clinic}"\ndata = "folder:{data}"\ndevice = "cpu"\n'
                '[label_map]\nNORMAL = "normal"\nPNEUMONIA = "pneumonia"\n'
            )
            link.fault_dir(clinic).mkdir(parents=True)
            link.launch_clinic(clinic)
        for clinic in clinics:
            link.joined(clinic)
        yield link
    finally:
        processes.stop()
