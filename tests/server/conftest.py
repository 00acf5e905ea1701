"""An in-process Flower Grid: the real ServerApp logic against real ClientApps, without Ray.

Rounds then take a second instead of the simulation engine's start-up, which keeps the resume and
hostile-update tests fast; the engine itself is covered in tests/simulations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import build_client_app
from hxr_model.data.phantoms import PHANTOM_CLASSES
from server.run_config import FederationConfig

DATA = "synthetic:64:2"
SITES = 2
# What a simulation's run config tells each node: it plays a partition of this data.
SIMULATION = {"data": DATA, "partition": "by-source", "seed": 0}


class UnusedGrid(Grid):
    """A Grid whose every method fails: the test grids below define only what the code under
    test calls, so a call to anything else shows up instead of passing silently."""

    def get_node_ids(self) -> Iterable[int]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:
        raise NotImplementedError


class LocalGrid(UnusedGrid):
    """Delivers each message straight to the ClientApp of its node, in the calling thread; an
    exception becomes an error reply, as Flower's runtime does."""

    def __init__(
        self,
        apps: dict[int, ClientApp],
        partitions: int,
        names: dict[int, str] | None = None,
        run_config: dict | None = None,
    ) -> None:
        # Messages stamp the sender's identity, which Flower's runtimes set before any app runs.
        TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self.apps = apps
        self.names = names or {}  # as the coordinator registered SuperNodes (deployment only)
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": index, "num-partitions": partitions},
                state=RecordDict(),
                run_config=SIMULATION if run_config is None else run_config,
            )
            for index, node in enumerate(apps)
        }

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        try:
            return self.apps[node](message, self.contexts[node])
        except Exception as error:
            failure = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(error))
            return Message(failure, reply_to=message)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=node, name=self.names.get(node, "")) for node in self.apps]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._deliver(message) for message in messages]


class SilentGrid(UnusedGrid):
    """One node that accepts messages and never replies, for a wait that must time out."""

    def get_node_ids(self) -> Iterable[int]:
        return [1]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return ["message-1"]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return []


def honest_app() -> ClientApp:
    return build_client_app()


@pytest.fixture
def make_grid() -> Callable[..., LocalGrid]:
    """`make_grid(*extra_apps, names=...)`: two honest clinics (partitions 1 and 2 of DATA, nodes
    100 and 101) plus any `extra_apps`, which ignore their partition; `names` are registered
    SuperNode names by node ID."""

    def make(*extra_apps: ClientApp, names: dict[int, str] | None = None) -> LocalGrid:
        apps = [honest_app() for _ in range(SITES)] + list(extra_apps)
        return LocalGrid({100 + index: app for index, app in enumerate(apps)}, SITES, names)

    return make


@pytest.fixture
def make_config(tmp_path) -> Callable[..., FederationConfig]:
    def make(**overrides) -> FederationConfig:
        values = {
            "num_server_rounds": 2,
            "prewarm_rounds": 1,
            "local_epochs": 1,
            "image_size": 32,
            "batch_size": 16,
            "classes": list(PHANTOM_CLASSES),
            "min_nodes": SITES,
            "gradcam_per_class": 1,
            "out_dir": str(tmp_path / "run"),
        }
        return FederationConfig(**(values | overrides))

    return make


@pytest.fixture
def silent_grid() -> SilentGrid:
    return SilentGrid()
