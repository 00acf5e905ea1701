"""`ReplyProgressGrid`: every arrival of replies is logged as it happens (what `hxr simulate`'s
live line and a coordinator's log show), and the terminal line counts them and clears itself."""

import logging
from collections.abc import Iterable
from types import SimpleNamespace

import pytest
from flwr.app import Message
from flwr.serverapp import Grid

from server.reply_progress import REPLIES_PATTERN, ReplyProgressGrid
from simulations.federation import ReplyProgress

from .conftest import UnusedGrid


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


def replies_logged(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int]]:
    found = [REPLIES_PATTERN.match(record.getMessage()) for record in caplog.records]
    return [(int(match.group(1)), int(match.group(2))) for match in found if match]


def test_every_arrival_of_replies_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        replies = ReplyProgressGrid(TrickleGrid()).send_and_receive([], timeout=30)
    assert len(list(replies)) == 3
    assert replies_logged(caplog) == [(1, 3), (2, 3), (3, 3)]


def test_the_round_timeout_still_applies(silent_grid: Grid, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert list(ReplyProgressGrid(silent_grid).send_and_receive([], timeout=0.3)) == []
    assert replies_logged(caplog) == []


def test_the_progress_line_counts_replies_and_clears_itself(capsys) -> None:
    progress = ReplyProgress(enabled=True)
    for received in (1, 2, 3):
        progress(received, 3)
    shown = capsys.readouterr().err
    assert "clinics" in shown and "2/3" in shown and progress.bar is None
    quiet = ReplyProgress(enabled=False)
    quiet(1, 3)
    assert capsys.readouterr().err == "" and quiet.bar is None
