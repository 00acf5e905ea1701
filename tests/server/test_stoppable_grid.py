"""`StoppableGrid`: a stop request ends a wait for replies at once, and only then; each reply
is announced as it arrives (the simulation's live progress line)."""

import threading
from collections.abc import Iterable
from types import SimpleNamespace

import pytest
from flwr.app import Message
from flwr.serverapp import Grid

from server.stoppable_grid import SimulationStopped, StoppableGrid
from simulations.federation import ReplyProgress

from .conftest import UnusedGrid


def test_a_wait_for_replies_ends_soon_after_stop(silent_grid: Grid) -> None:
    stop = threading.Event()
    grid = StoppableGrid(silent_grid, stop)
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(SimulationStopped):  # instead of waiting out the hour-long timeout
        grid.send_and_receive([], timeout=3600)


def test_without_stop_the_round_timeout_still_applies(silent_grid: Grid) -> None:
    grid = StoppableGrid(silent_grid, threading.Event())
    assert list(grid.send_and_receive([], timeout=0.3)) == []
    assert list(grid.get_node_ids()) == [1]


class TrickleGrid(UnusedGrid):
    """Three messages out; their replies come back one per poll."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.waiting = ["a", "b", "c"]
        return list(self.waiting)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        if not self.waiting:
            return []
        # The grid reads only which message a reply answers.
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=self.waiting.pop(0)))]


def test_every_reply_is_announced_as_it_arrives() -> None:
    heard: list[tuple[int, int]] = []
    grid = StoppableGrid(TrickleGrid(), threading.Event(), lambda *counts: heard.append(counts))
    assert len(list(grid.send_and_receive([], timeout=30))) == 3
    assert heard == [(1, 3), (2, 3), (3, 3)]


def test_the_progress_line_counts_replies_and_clears_itself(capsys) -> None:
    progress = ReplyProgress(enabled=True)
    for received in (1, 2, 3):
        progress(received, 3)
    shown = capsys.readouterr().err
    assert "clinics" in shown and "2/3" in shown and progress.bar is None
    quiet = ReplyProgress(enabled=False)
    quiet(1, 3)
    assert capsys.readouterr().err == "" and quiet.bar is None
