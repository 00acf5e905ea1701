"""Shared by the client tests: one message through the ClientApp a clinic's SuperNode runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import build_client_app
from client.site_config import SITE_CONFIG_KEY

SITE_NODE_ID = 7


@pytest.fixture
def send_to_site() -> Callable[[Path, RecordDict, str], Message]:
    """`send_to_site(site_toml, content, message_type)`: the reply of (or the exception raised
    by) the ClientApp that a SuperNode started with `--node-config site-config=<site_toml>`
    runs, called as Flower's runtime calls it."""
    # Messages stamp the sender's identity, which Flower's runtimes set before any app runs.
    TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID

    def send(site: Path, content: RecordDict, message_type: str) -> Message:
        context = Context(
            run_id=1,
            node_id=SITE_NODE_ID,
            node_config={SITE_CONFIG_KEY: str(site)},
            state=RecordDict(),
            run_config={},
        )
        message = Message(content, dst_node_id=SITE_NODE_ID, message_type=message_type)
        return build_client_app()(message, context)

    return send
