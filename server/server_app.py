"""The coordinator's Flower ServerApp: the run config Flower provides (`[tool.flwr.app.config]`
plus `--run-config`) names the whole federation, in deployment and in `hxr simulate` alike."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from server.reply_progress import ReplyProgressGrid
from server.run_config import FederationConfig

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = FederationConfig.from_run_config(context.run_config)
    run_federation(ReplyProgressGrid(grid), config, context.run_id)
