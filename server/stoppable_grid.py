"""A Flower Grid the caller can stop, for ServerApps that run in a thread of its process.

`flwr.simulation.run_simulation` runs the ServerApp in a non-daemon thread that waits for replies
until the round timeout (an hour by default). If the simulation ends early (Ctrl-C, a crashed
backend), that thread would keep the process alive; through this grid it stops within a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from server.grid_views import DelegatingGrid

POLL_S = 0.2


class SimulationStopped(RuntimeError):
    """Raised in the ServerApp thread once the simulation around it has ended."""


class StoppableGrid(DelegatingGrid):
    """Delegates to `grid`; every wait checks `stop` first."""

    def __init__(
        self,
        grid: Grid,
        stop: threading.Event,
        on_replies: Callable[[int, int], None] | None = None,
    ) -> None:
        super().__init__(grid)
        self.stop = stop
        self.on_replies = on_replies

    def _check(self) -> None:
        if self.stop.is_set():
            raise SimulationStopped("the simulation ended before the ServerApp")

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's push-then-poll loop, polling often and checking `stop` on every turn;
        `on_replies(received, sent)` hears of every reply as it arrives."""
        pending = set(self.push_messages(messages))
        sent = len(pending)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            received = list(self.pull_messages(pending))
            replies.extend(received)
            pending -= {message.metadata.reply_to_message_id for message in received}
            if self.on_replies is not None and received:
                self.on_replies(len(replies), sent)
            if pending:
                self.stop.wait(POLL_S)
        return replies
