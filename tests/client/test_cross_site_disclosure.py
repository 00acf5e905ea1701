"""What a clinic lets leave it in the cross-site round: its local model only where its site
config allows, once a run; scores of the coordinator's models only up to the number of models
the round declared, separately from the federated rounds' evaluation budget."""

from collections.abc import Callable

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import SiteFailure, build_client_app
from client.site_config import simulated_site
from hxr_model.data.phantoms import PHANTOM_CLASSES
from protocol.arrays import to_record
from protocol.instructions import CrossSiteInstructions, LocalModelInstructions
from protocol.records import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_MODEL_MESSAGE,
    GRADCAM_ARRAYS_KEY,
    LOCAL_MODEL_MESSAGE,
    METRICS_KEY,
)
from protocol.schedule import phase_state
from server.cross_site import cross_site_instructions
from server.federation import initial_state
from server.run_config import FederationConfig

# A binary task, where an evaluation also carries validation-score counts.
ABNORMAL = {name: "normal" if name == "normal" else "abnormal" for name in PHANTOM_CLASSES}
CONFIG = FederationConfig(
    classes=["normal", "abnormal"],
    num_server_rounds=2,
    prewarm_rounds=1,
    local_epochs=1,
    image_size=32,
    batch_size=16,
)
CLASSIFIER = phase_state(initial_state(CONFIG), "finetune")

Send = Callable[..., Message]


def clinic(share_local_model: bool) -> Send:
    """`send(message_type, instructions)`: one run's messages to one simulated clinic."""
    TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    site = simulated_site(
        0,
        2,
        "synthetic:64:2",
        "by-source",
        0,
        share_local_model=share_local_model,
        label_map=ABNORMAL,
    )
    app = build_client_app(lambda context: site)
    context = Context(1, 7, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {})

    def send(message_type: str, instructions: dict) -> Message:
        content = RecordDict(
            {ARRAYS_KEY: to_record(CLASSIFIER), CONFIG_KEY: ConfigRecord(instructions)}
        )
        return app(Message(content, dst_node_id=7, message_type=message_type), context)

    return send


def evaluation(models: int, **changes) -> dict:
    settings = cross_site_instructions(CONFIG, models) | changes
    return CrossSiteInstructions(**settings).to_config()


def local_model(models: int) -> dict:
    return LocalModelInstructions(
        **cross_site_instructions(CONFIG, models),
        prewarm_rounds=CONFIG.prewarm_rounds,
        prewarm_epochs=CONFIG.prewarm_epochs,
        prewarm_learning_rate=CONFIG.prewarm_learning_rate,
    ).to_config()


def histogram(reply: Message) -> list[int]:
    return list(reply.content[METRICS_KEY]["val-score-histogram"])


def test_a_clinic_scores_at_most_the_models_the_round_declared() -> None:
    send = clinic(share_local_model=False)
    for _ in range(2):
        reply = send(EVALUATE_MODEL_MESSAGE, evaluation(models=2))
        assert list(reply.content.metric_records) == [METRICS_KEY]
        assert not reply.content.array_records  # metrics only: no Grad-CAM
        assert not any(histogram(reply))  # nor validation-score counts
    with pytest.raises(SiteFailure, match="DisclosureRefused"):
        send(EVALUATE_MODEL_MESSAGE, evaluation(models=2))
    # The federated rounds' own budget (2 rounds + a margin of 2) is a separate one.
    round_config = CONFIG.round_instructions(2, "finetune").to_config()
    for _ in range(4):
        reply = send(MessageType.EVALUATE, round_config)
        assert GRADCAM_ARRAYS_KEY in reply.content.array_records and any(histogram(reply))


def test_a_round_cannot_raise_its_declared_model_count_or_ask_for_more_than_metrics() -> None:
    send = clinic(share_local_model=False)
    send(EVALUATE_MODEL_MESSAGE, evaluation(models=2))
    with pytest.raises(SiteFailure, match="DisclosureRefused"):
        send(EVALUATE_MODEL_MESSAGE, evaluation(models=21))
    heat_maps = evaluation(models=2) | {"gradcam-per-class": 2}
    with pytest.raises(SiteFailure, match="ConfigError"):
        send(EVALUATE_MODEL_MESSAGE, heat_maps)
    with pytest.raises(SiteFailure, match="ConfigError"):  # 20 local models + the global one
        send(EVALUATE_MODEL_MESSAGE, evaluation(models=2) | {"cross-site-models": 22})


def test_a_local_model_leaves_only_where_the_site_allows_and_once_a_run() -> None:
    with pytest.raises(SiteFailure, match="DisclosureRefused"):
        clinic(share_local_model=False)(LOCAL_MODEL_MESSAGE, local_model(models=2))
    send = clinic(share_local_model=True)
    reply = send(LOCAL_MODEL_MESSAGE, local_model(models=2))
    assert set(reply.content[ARRAYS_KEY]) == set(CLASSIFIER)
    with pytest.raises(SiteFailure, match="DisclosureRefused"):
        send(LOCAL_MODEL_MESSAGE, local_model(models=2))
