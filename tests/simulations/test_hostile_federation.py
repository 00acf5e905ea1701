"""One hostile clinic in a real federation (Flower's simulation engine, Ray actors as clinics):
over the rounds it sends every kind of malformed reply. The run completes every round, each
reply is recorded with the site and the reason, and the final model equals that of the same run
in which the clinic's replies simply fail."""

import io
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import ray.cloudpickle
from flwr.app import Array, Error, Message, MetricRecord
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

import client.client_app
from protocol.records import ARRAYS_KEY, GRADCAM_ARRAYS_KEY, METRICS_KEY, STATISTICS_ACTION
from server.run_store import RunStore
from simulations.federation import SimulationSettings, simulate

HOSTILE = 2  # partition id: site-3
ROUNDS = 5
NUM_CLASSES = 6
HUGE = (2**42,)
# Three phantom clinics, one pre-warm round, then four fine-tuning rounds on 32 px images.
TINY_FEDERATION = {"data": "synthetic:72:3", "sites": 3, "num_server_rounds": ROUNDS}
TINY_FEDERATION |= {"prewarm_rounds": 1, "local_epochs": 1, "image_size": 32, "batch_size": 16}
TINY_FEDERATION |= {"gradcam_per_class": 1, "cpus": 2}


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


def clinic_app(honest: ClientApp, train, evaluate) -> ClientApp:
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


def run(tmp_path: Path, name: str, monkeypatch, train, evaluate) -> RunStore:
    build_honest = client.client_app.build_client_app
    monkeypatch.setattr(
        client.client_app,
        "build_client_app",
        lambda sites: clinic_app(build_honest(sites), train, evaluate),
    )
    return RunStore(simulate(SimulationSettings(**TINY_FEDERATION, out=tmp_path / name)))


@pytest.mark.slow
def test_a_hostile_clinic_ends_no_round_and_has_no_influence(tmp_path: Path, monkeypatch) -> None:
    # The clinics' ClientApp travels to Ray's actors by value: this module is not importable there.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    attacked = run(tmp_path, "attacked", monkeypatch, hostile_train, hostile_evaluate)
    reference = run(tmp_path, "failing", monkeypatch, failing, failing)

    records = attacked.read_rounds()
    assert [record.round for record in records] == list(range(1, ROUNDS + 1))
    for record in records:
        assert sorted(record.train.sites) == ["site-1", "site-2"]
    by_round = {
        (record.round, incident.stage): incident.reason
        for record in records
        for incident in record.rejected
        if incident.site == "site-3"
    }
    assert "expected float32" in by_round[(1, "train")]
    assert "serialised as 'torch.Tensor'" in by_round[(2, "train")]
    assert "is float64" in by_round[(3, "train")]
    assert "'train-loss'" in by_round[(4, "train")]
    assert "'per-class-recall'" in by_round[(2, "evaluate")]
    assert "'confusion-matrix'" in by_round[(3, "evaluate")]
    assert "'accuracy'" in by_round[(5, "evaluate")]
    (failure,) = [i for i in records[4].failures if i.site == "site-3" and i.stage == "train"]
    assert len(failure.reason) <= 300 and "\x1b" not in failure.reason
    # The Grad-CAM samples of round 4 were ignored; its metrics still counted.
    assert "site-3" in records[3].evaluate.sites and "site-3" not in records[3].gradcam

    final, expected = attacked.load_state().arrays, reference.load_state().arrays
    assert set(final) == set(expected)
    for name, array in expected.items():
        np.testing.assert_allclose(final[name], array, rtol=0, atol=1e-5, err_msg=name)
    assert math.isfinite(records[-1].evaluate.aggregate["accuracy"])
