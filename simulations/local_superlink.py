"""A Flower SuperLink in simulation mode that `hxr simulate` starts, watches and always stops.

Flower 1.42 runs a simulation as `flwr run` against a SuperLink in simulation mode: the SuperLink
starts a `flwr-simulation` process that runs the ServerApp and, on Ray actors, one ClientApp per
virtual SuperNode. `flwr run APP local` starts such a SuperLink itself, but on fixed ports, found
on PATH, and leaves it running. This one uses free loopback ports, this environment's Flower
binaries and a Flower home folder of its own (the connection and the installed app, deleted
afterwards), and it ends with its caller, with everything it started: on exit, on error, on
Ctrl-C, and (Linux) when the caller is killed outright (`simulations.process_guard`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import tomli_w

from hxr_model.errors import HXRError

BIN = Path(sys.executable).parent
CONNECTION = "hxr-simulation"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
STATUS_TIMEOUT_S = 120.0
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
STARTED_RUN = re.compile(r"Successfully started run (\d+)")


class SimulationError(HXRError):
    """The local SuperLink or the run on it failed; the message says where its log is."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalSuperLink:
    """`with LocalSuperLink(env, log_path) as superlink: superlink.run(...)`.

    The SuperLink runs under a process guard, which stopping asks to end the whole tree.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.home = Path(tempfile.mkdtemp(prefix="hxr-flower-"))
        # The SuperLink starts Flower's other executables by name.
        path = os.pathsep.join([str(BIN), env.get("PATH", os.defpath)])
        self.env = {**env, "FLWR_HOME": str(self.home), "PATH": path}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LocalSuperLink:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        http_port = free_port()
        connection = {"address": f"127.0.0.1:{http_port}", "insecure": True}
        config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
        (self.home / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
        command = [
            *(sys.executable, "-m", "simulations.process_guard"),
            str(BIN / "flower-superlink"),
            *("--insecure", "--simulation", "--isolation", "subprocess"),
            *("--control-api-address", f"127.0.0.1:{free_port()}"),
            *("--fleet-api-address", f"127.0.0.1:{free_port()}"),
            *("--host", "127.0.0.1", "--port", str(http_port)),
            # A file: Flower's in-memory SQLite state fails under concurrent requests.
            *("--database", str(self.home / "state.db")),
            "--disable-runtime-dependency-installation",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the tree through `stop`
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy(http_port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SimulationError(
                    f"the local Flower SuperLink did not start; its log: {self.log_path}"
                )
            time.sleep(0.2)

    @staticmethod
    def _healthy(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, Any],
        federation_config: Mapping[str, Any],
        on_line: Callable[[str], None],
    ) -> None:
        """`flwr run` of the Flower app in `app_dir`; each line the run logs goes to `on_line`
        (colour codes removed). Returns once the run has finished; raises SimulationError
        unless it completed."""
        overrides = self.home / "run-config.toml"
        overrides.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
        federation = " ".join(
            f"{key}={json.dumps(value)}" for key, value in federation_config.items()
        )
        command = [str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--stream"]
        command += ["--run-config", str(overrides), "--federation-config", federation]
        run_id = None
        with subprocess.Popen(
            command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as flwr_run:
            assert flwr_run.stdout is not None
            for raw in flwr_run.stdout:
                line = ANSI_ESCAPE.sub("", raw.rstrip("\n"))
                if run_id is None and (started := STARTED_RUN.search(line)):
                    run_id = started.group(1)
                on_line(line)
        if flwr_run.returncode != 0 or run_id is None:
            raise SimulationError(f"`flwr run` did not start the run (exit {flwr_run.returncode})")
        status = self._final_status(run_id)
        if status != "finished:completed":
            raise SimulationError(f"the run ended {status.removeprefix('finished:')}")

    def _final_status(self, run_id: str) -> str:
        """The run's status once it has finished: the stream may end just before."""
        deadline = time.monotonic() + STATUS_TIMEOUT_S
        while True:
            listed = subprocess.run(
                [str(BIN / "flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            try:
                status = json.loads(listed.stdout)["runs"][0]["status"]
            except (ValueError, KeyError, IndexError):
                status = f"unknown ({listed.stdout.strip()[-200:]})"
            if status.startswith("finished:") or time.monotonic() > deadline:
                return status
            time.sleep(0.5)

    def stop(self) -> None:
        """End the SuperLink with everything it started; delete the Flower home folder."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        shutil.rmtree(self.home, ignore_errors=True)
