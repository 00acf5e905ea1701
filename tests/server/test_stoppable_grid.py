import threading
from collections.abc import Iterable

import pytest
from flwr.app import Message
from flwr.serverapp import Grid

from server.stoppable_grid import SimulationStopped, StoppableGrid


class SilentGrid(Grid):
    """Accepts messages and never delivers a reply."""

    def get_node_ids(self) -> Iterable[int]:
        return [1]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return ["message-1"]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return []

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:
        raise NotImplementedError


def test_a_wait_for_replies_ends_soon_after_stop() -> None:
    stop = threading.Event()
    grid = StoppableGrid(SilentGrid(), stop)
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(SimulationStopped):  # instead of waiting out the hour-long timeout
        grid.send_and_receive([], timeout=3600)


def test_without_stop_the_round_timeout_still_applies() -> None:
    grid = StoppableGrid(SilentGrid(), threading.Event())
    assert list(grid.send_and_receive([], timeout=0.3)) == []
    assert list(grid.get_node_ids()) == [1]
