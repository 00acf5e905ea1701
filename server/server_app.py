"""The coordinator's Flower ServerApp.

`app` reads the run config Flower provides (`[tool.flwr.app.config]` plus `--run-config`).
`build_server_app` takes a ready config instead, for the in-process simulation, where
`flwr.simulation.run_simulation` passes no run config.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from server.run_config import FederationConfig
from server.stoppable_grid import StoppableGrid


def build_server_app(
    config: FederationConfig | None = None,
    stop: threading.Event | None = None,
    on_replies: Callable[[int, int], None] | None = None,
) -> ServerApp:
    """A ServerApp running `config`, or the run config of each Flower run when None. With
    `stop`, the app gives up waiting for nodes once the event is set, and `on_replies(received,
    sent)` hears of each reply of a stage (in-process simulation)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or FederationConfig.from_run_config(context.run_config)
        if stop is not None:
            grid = StoppableGrid(grid, stop, on_replies)
        run_federation(grid, run_config, context.run_id)

    return app


app = build_server_app()
