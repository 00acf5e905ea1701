"""`LocalSuperLink`: a run that fails ends in one SimulationError with the run's own error in the
log it streamed, and nothing it started is left: no process, no Flower home folder."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from simulations.local_superlink import LocalSuperLink, SimulationError
from simulations.process_guard import descendants

pytestmark = pytest.mark.slow

FAILING_APP = """
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    raise RuntimeError(f"refusing round {context.run_config['rounds']}")
"""
PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "failing-app"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "failing_app:server"
clientapp = "failing_app:client"

[tool.flwr.app.config]
rounds = 1
"""


def test_a_failing_run_raises_once_and_leaves_nothing_running(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "failing_app.py").write_text(textwrap.dedent(FAILING_APP))
    (app / "pyproject.toml").write_text(PYPROJECT)
    lines: list[str] = []
    environment = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    superlink = LocalSuperLink(environment, tmp_path / "superlink.log")
    with pytest.raises(SimulationError, match="the run ended failed"), superlink:
        assert superlink.process is not None and descendants(superlink.process.pid)
        superlink.run(app, {"rounds": 7}, {"num-supernodes": 1}, lines.append)
    assert any("refusing round 7" in line for line in lines)  # the run config reached it
    assert superlink.process is None and not superlink.home.exists()
    assert descendants(os.getpid()) - {os.getpid()} <= set(tracker_pids())


def tracker_pids() -> list[int]:
    """multiprocessing's resource tracker, which other tests may have started."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"resource_tracker" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
