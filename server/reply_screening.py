"""Which clinic each reply comes from, and whether it may count: every reply passes here first.

A site is named by its registered SuperNode name (`flwr supernode register --name`) where the
coordinator registered one, else by the name it replies with; a site that never replied is
named too. A reply is screened in a cage: whatever it holds (an unknown protocol version, a
metric of the wrong type, a name claimed by another clinic, bytes that break a decoder), the
worst outcome is that this one reply is recorded as rejected and the round goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import WARNING
from typing import Generic, TypeVar

from flwr.app import Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from protocol.arrays import ArrayMismatch
from protocol.records import METRICS_KEY, ROLL_CALL_MESSAGE
from protocol.replies import Metrics, ReplyRejected, check_protocol_version, replying_site
from protocol.site_names import is_site_name
from server.round_record import Stage

# A site's error text is shown in terminals and reports: bounded, printable.
MAX_REASON_CHARS = 300
UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

MetricsType = TypeVar("MetricsType", bound=Metrics)
NoteIncident = Callable[[str, Stage, str, str], None]  # (kind, stage, site, reason)


def printable(reason: str) -> str:
    """A reason as it may be stored and printed: no terminal escapes, at most 300 characters."""
    text = UNPRINTABLE.sub("?", reason)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


@dataclass(frozen=True)
class Screened(Generic[MetricsType]):
    """A reply that passed screening: who sent it and its validated metrics."""

    site: str
    node: int
    message: Message
    metrics: MetricsType


class ReplyScreen:
    """Tracks what was sent to whom in a stage and screens what comes back."""

    def __init__(self, num_classes: int, note: NoteIncident) -> None:
        self.num_classes = num_classes
        self.note = note
        self.site_of_node: dict[int, str] = {}
        self.registered_names: dict[int, str] = {}
        self.roll_called: set[int] = set()
        self.outgoing: list[Message] = []
        self.awaited: set[int] = set()

    def note_registered_names(self, grid: Grid) -> None:
        """The SuperNode names the coordinator registered (empty in simulations)."""
        for node in grid.get_nodes():
            if is_site_name(node.name):
                self.registered_names[node.node_id] = node.name

    def roll_call(self, grid: Grid, nodes: Iterable[int], timeout: float) -> None:
        """Ask the nodes known by neither a registered name nor a reply who they are, once
        each: a node that does not answer, or claims a name it may not, stays `node-<id>` until
        a later reply names it, and a silent one does not hold up every round's draw."""
        unknown = [
            node
            for node in nodes
            if node not in self.registered_names
            and node not in self.site_of_node
            and node not in self.roll_called
        ]
        if not unknown:
            return
        self.roll_called.update(unknown)
        messages = [
            Message(RecordDict({}), dst_node_id=node, message_type=ROLL_CALL_MESSAGE)
            for node in unknown
        ]
        replies = list(grid.send_and_receive(self.sent(messages), timeout=timeout))
        for node, reply in zip(self._senders(replies), replies, strict=True):
            try:
                if reply.has_error():
                    raise ReplyRejected(printable(reply.error.reason))
                check_protocol_version(reply.content)
                self._identify(node, reply, set(self.site_of_node.values()))
            except Exception as error:
                log(WARNING, "roll call: %s: %s", self.site(node), rejection_reason(error))

    def site(self, node: int) -> str:
        """A node's name in the records: its registered SuperNode name, else the site name it
        replied with, else its node ID."""
        return self.registered_names.get(node) or self.site_of_node.get(node) or f"node-{node}"

    def sent(self, messages: Iterable[Message]) -> list[Message]:
        """Remember a stage's outgoing messages, to know who has not answered."""
        self.outgoing = list(messages)
        self.awaited = {message.metadata.dst_node_id for message in self.outgoing}
        return self.outgoing

    def _senders(self, replies: list[Message]) -> list[int]:
        """The node each reply answers for. The SuperLink answers in place of a node it lost
        (missed heartbeats) under its own ID, so go by the message replied to; the grid gave
        our messages their IDs when it sent them."""
        sent_to = {
            message.metadata.message_id: message.metadata.dst_node_id
            for message in self.outgoing
            if message.metadata.message_id
        }
        return [
            sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            for reply in replies
        ]

    def _identify(self, node: int, message: Message, taken: set[str]) -> str:
        claimed = replying_site(message.content)
        registered = self.registered_names.get(node)
        # An authenticated clinic must not speak for another (its results, its folder).
        if registered is not None and claimed is not None and claimed != registered:
            raise ReplyRejected(
                f"claims to be site '{claimed}' but its SuperNode is registered as '{registered}'"
            )
        if registered is None and claimed in self.registered_names.values():
            raise ReplyRejected(
                f"claims to be site '{claimed}', registered for another SuperNode, "
                f"from a SuperNode registered under no name"
            )
        if claimed is None or claimed in taken:
            raise ReplyRejected("missing, invalid or duplicate site name")
        self.site_of_node[node] = claimed
        return registered or claimed

    def _metrics(self, message: Message, kind: type[MetricsType]) -> MetricsType:
        check_protocol_version(message.content)
        records = message.content.metric_records
        if list(records) != [METRICS_KEY]:
            raise ReplyRejected(f"expected one metric record '{METRICS_KEY}', got {list(records)}")
        return kind.parse(records[METRICS_KEY], self.num_classes)

    def screen(
        self, replies: Iterable[Message], stage: Stage, kind: type[MetricsType]
    ) -> list[Screened[MetricsType]]:
        """Replies with a usable, uniquely named result, by site name; the rest are noted."""
        replies = list(replies)
        senders = self._senders(replies)
        for node in sorted(self.awaited - set(senders)):
            self.note("failures", stage, self.site(node), "no reply within the round timeout")
        accepted: dict[str, Screened[MetricsType]] = {}
        for node, message in zip(senders, replies, strict=True):
            if message.has_error():
                self.note("failures", stage, self.site(node), printable(message.error.reason))
                continue
            try:
                site = self._identify(node, message, set(accepted))
                accepted[site] = Screened(site, node, message, self._metrics(message, kind))
            except Exception as error:
                self.note("rejected", stage, self.site(node), rejection_reason(error))
        return [accepted[site] for site in sorted(accepted)]


def rejection_reason(error: Exception) -> str:
    """Our own checks explain themselves; anything else a reply provoked is named by its type."""
    if isinstance(error, ReplyRejected | ArrayMismatch):
        return printable(str(error))
    return printable(f"unreadable reply ({type(error).__name__}: {error})")
