"""A Flower Grid that reports a stage's replies as they arrive.

Flower's own `send_and_receive` waits for the last reply of a stage in silence. A coordinator
reading the run's log, and `hxr simulate`'s live line (which reads the same log, streamed from
the simulation's ServerApp process), want to see `replies 7/10` while a round runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import Message
from flwr.common.logger import log

from server.grid_views import DelegatingGrid

POLL_S = 0.2
REPLIES_LINE = "replies {received}/{sent}"
REPLIES_PATTERN = re.compile(r"replies (\d+)/(\d+)$")


class ReplyProgressGrid(DelegatingGrid):
    """Delegates to `grid`; a stage's wait logs every arrival of replies."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Flower's push-then-poll loop, polling often and logging the count of replies."""
        pending = set(self.push_messages(messages))
        sent = len(pending)
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            received = list(self.pull_messages(pending))
            replies.extend(received)
            pending -= {message.metadata.reply_to_message_id for message in received}
            if received:
                log(INFO, REPLIES_LINE.format(received=len(replies), sent=sent))
            if pending:
                time.sleep(POLL_S)
        return replies
