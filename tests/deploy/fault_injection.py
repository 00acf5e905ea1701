"""Test-only ClientApp: the project's ClientApp behind a mod that lets a test stall a site.

Never part of the project's app: tests/deploy/harness.py copies it into the bundle of a fault
test's run only. A SuperNode started with `--node-config '... fault-dir="DIR"'` marks each
message it gets, and keeps it while the test holds it, with files named after the message:
  DIR/<type>-<round>.received   written when the message arrives (e.g. train-2.received)
  DIR/<type>-<round>.hold       created by the test: the site works on while it exists
  DIR/<type>-<round>.done       written once the site has its reply
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from client.client_app import build_client_app
from protocol.instructions import RoundInstructions
from protocol.records import CONFIG_KEY, STATISTICS_ACTION

FAULT_DIR_KEY = "fault-dir"
POLL_S = 0.2


def hold_while_asked(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    folder = context.node_config.get(FAULT_DIR_KEY)
    if folder is None:
        return call_next(message, context)
    server_round = RoundInstructions.from_config(message.content[CONFIG_KEY]).server_round
    stem = f"{message.metadata.message_type}-{server_round}"
    marker = Path(str(folder)).joinpath
    marker(f"{stem}.received").touch()
    while marker(f"{stem}.hold").exists():
        time.sleep(POLL_S)
    reply = call_next(message, context)
    marker(f"{stem}.done").touch()
    return reply


project_app = build_client_app()
app = ClientApp(mods=[hold_while_asked])
app.train()(project_app)
app.evaluate()(project_app)
app.query(STATISTICS_ACTION)(project_app)
