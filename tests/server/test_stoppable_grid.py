"""`StoppableGrid`: a stop request ends a wait for replies at once, and only then."""

import threading

import pytest
from flwr.serverapp import Grid

from server.stoppable_grid import SimulationStopped, StoppableGrid


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
