"""A hostile clinic's Flower ClientApp, for tests/simulations/test_hostile_federation.py: the
project's ClientApp at every clinic but site-3, whose replies pass through a hostile (`attacked`)
or a failing (`failing`) rewrite. The test packs this module into a Flower app of its own."""

from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, Error, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from client.client_app import app as honest
from protocol.records import ARRAYS_KEY, GRADCAM_ARRAYS_KEY, METRICS_KEY, STATISTICS_ACTION

HOSTILE = 2  # partition id: site-3
NUM_CLASSES = 6
HUGE = (2**42,)


def header_only(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def replace_first_array(reply: Message, make) -> Message:
    record = reply.content[ARRAYS_KEY]
    name = next(iter(record))
    record[name] = make(record[name])
    return reply


def with_metrics(reply: Message, **values) -> Message:
    reply.content[METRICS_KEY] = MetricRecord(dict(reply.content[METRICS_KEY]) | values)
    return reply


def hostile_train(server_round: int, message: Message, reply: Message) -> Message:
    """Round 1: an array claiming 2**42 floats in 128 bytes; 2: a non-numpy serialisation;
    3: float64 weights; 4: a list-valued loss; 5: an error with 100 kB of terminal escapes."""
    if server_round == 1:
        huge = Array(dtype="float32", shape=HUGE, stype="numpy.ndarray", data=header_only(HUGE))
        return replace_first_array(reply, lambda _: huge)
    if server_round == 2:
        return replace_first_array(
            reply, lambda a: Array(dtype=a.dtype, shape=a.shape, stype="torch.Tensor", data=a.data)
        )
    if server_round == 3:
        return replace_first_array(reply, lambda a: Array(a.numpy().astype(np.float64)))
    if server_round == 4:
        return with_metrics(reply, **{"train-loss": [1.0, 2.0]})
    reason = "\x1b]0;pwned\x07" + "A" * 100_000
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
    )


def hostile_evaluate(server_round: int, message: Message, reply: Message) -> Message:
    """Round 2: per-class recall of n**2 values; 3: a confusion matrix of n values; 4: Grad-CAM
    that is not numpy; 5: a list-valued accuracy."""
    if server_round == 2:
        return with_metrics(reply, **{"per-class-recall": [0.5] * NUM_CLASSES**2})
    if server_round == 3:
        return with_metrics(reply, **{"confusion-matrix": [1] * NUM_CLASSES})
    if server_round == 4:
        heatmaps = reply.content[GRADCAM_ARRAYS_KEY]["heatmaps"]
        reply.content[GRADCAM_ARRAYS_KEY]["heatmaps"] = Array(
            dtype=heatmaps.dtype, shape=heatmaps.shape, stype="pickle", data=heatmaps.data
        )
        return reply
    return with_metrics(reply, accuracy=[0.5, 0.5])


def failing(server_round: int, message: Message, reply: Message) -> Message:
    raise RuntimeError("this clinic's replies fail")


def clinic_app(train, evaluate) -> ClientApp:
    """`honest` at every clinic but site-3, whose replies pass through `train` / `evaluate`."""
    app = ClientApp()

    def round_of(message: Message) -> int:
        return int(message.content["config"]["server-round"])

    def hostile(context) -> bool:
        return int(context.node_config["partition-id"]) == HOSTILE

    @app.train()
    def do_train(message: Message, context) -> Message:
        reply = honest(message, context)
        return train(round_of(message), message, reply) if hostile(context) else reply

    @app.evaluate()
    def do_evaluate(message: Message, context) -> Message:
        reply = honest(message, context)
        return evaluate(round_of(message), message, reply) if hostile(context) else reply

    @app.query(STATISTICS_ACTION)
    def do_statistics(message: Message, context) -> Message:
        return honest(message, context)

    return app


attacked = clinic_app(hostile_train, hostile_evaluate)
failing_clinic = clinic_app(failing, failing)
