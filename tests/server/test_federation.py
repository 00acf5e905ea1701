"""The server's whole run loop against real ClientApps (in-process grid, see conftest)."""

import io
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.client_app import build_client_app
from client.site_config import validate_site_config
from hxr_model.checkpoint import load_checkpoint
from hxr_model.errors import ConfigError
from protocol.arrays import from_record
from protocol.records import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, SITE_KEY
from protocol.replies import TRAIN_METRICS, site_record
from server.federation import fingerprint, initial_state, run_federation
from server.run_store import ResumeState, RunStore


def test_a_run_prewarms_finetunes_and_writes_every_result(make_grid, make_config) -> None:
    config = make_config()
    run_dir = run_federation(make_grid(), config, run_id=7)

    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["phase"]) for r in records] == [(1, "prewarm"), (2, "finetune")]
    for record in records:
        assert sorted(record["train"]["sites"]) == ["site-1", "site-2"]
        assert set(record["train"]["sites"]["site-1"]) == set(
            TRAIN_METRICS[record["phase"]].names()
        )
    assert records[0]["evaluate"]["sites"] == {}  # pre-warm rounds are not evaluated
    assert all(not r["failures"] and not r["rejected"] for r in records)
    # Before evaluation both sites re-measured BatchNorm statistics for the aggregated weights.
    assert records[1]["statistics"] == ["site-1", "site-2"] and records[0]["statistics"] == []
    final = records[1]["evaluate"]["aggregate"]
    assert 0.0 <= final["accuracy"] <= 1.0
    total = sum(s["num-examples"] for s in records[1]["evaluate"]["sites"].values())
    assert final["num-examples"] == total == sum(final["confusion-matrix"])

    for site in ("site-1", "site-2"):
        assert list((run_dir / "gradcam" / site / "round-002").glob("*.png"))
        assert (run_dir / "sites" / f"{site}.csv").read_text().startswith("round,phase,")
    loaded = load_checkpoint(run_dir / "global_model.pt")
    assert loaded.class_names == config.classes and loaded.image_size == 32
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 2 and summary["federated"]["num-examples"] == total
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()

    # Pre-warming trained the encoder and projection head and left the classifier head alone.
    start = initial_state(config)
    after_prewarm = load_checkpoint(run_dir / "checkpoints" / "round-001.pt").model.state_dict()
    assert np.array_equal(after_prewarm["head.1.weight"].numpy(), start["head.1.weight"])
    encoder = next(n for n in start if n.startswith("encoder.") and n.endswith(".weight"))
    assert not np.allclose(after_prewarm[encoder].numpy(), start[encoder])
    projection = RunStore(run_dir).load_state().arrays["projection.layers.0.weight"]
    assert not np.allclose(projection, start["projection.layers.0.weight"])


def hostile_app(name: str, corrupt) -> ClientApp:
    """A site that returns `corrupt(global weights)` (arrays, or Flower Arrays as they are) with
    plausible metrics, and whose evaluation crashes."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context) -> Message:
        phase = message.content[CONFIG_KEY]["phase"]
        metrics = {key: 0.5 for key in TRAIN_METRICS[phase].names()} | {"num-examples": 1000}
        metrics |= {"per-class-recall": [0.5] * 6, "skipped-files": 0}
        metrics |= {"local-steps": 10}
        arrays = {k: corrupt(v) for k, v in from_record(message.content[ARRAYS_KEY]).items()}
        record = ArrayRecord(
            {k: a if isinstance(a, Array) else Array(a) for k, a in arrays.items()}
        )
        content = {
            ARRAYS_KEY: record,
            METRICS_KEY: MetricRecord(metrics),
            SITE_KEY: site_record(name),
        }
        return Message(RecordDict(content), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context) -> Message:
        raise RuntimeError("laptop went to sleep")

    return app


def pickled(array: np.ndarray) -> Array:
    """An array serialised with pickle, which could run code when loaded."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"payload": 1}] * array.size, dtype=object), allow_pickle=True)
    return Array(dtype="object", shape=array.shape, stype="numpy.ndarray", data=buffer.getvalue())


def with_nan(array: np.ndarray) -> np.ndarray:
    array = array.copy()
    array.flat[0] = np.nan
    return array


def test_hostile_updates_are_rejected_logged_and_have_no_influence(
    make_grid, make_config, tmp_path
):
    config = make_config(
        num_server_rounds=1, prewarm_rounds=0, min_nodes=6, out_dir=str(tmp_path / "attacked")
    )
    clinic = {"name": "secret-clinic", "data": "folder:/srv/secret-clinic"}
    broken_site = build_client_app(lambda context: validate_site_config(clinic, "site.toml"))
    hostile = make_grid(
        hostile_app("nan-site", with_nan),
        hostile_app("huge-site", lambda a: a * 1e6),
        hostile_app("pickle-site", pickled),
        broken_site,
    )
    run_dir = run_federation(hostile, config, run_id=1)
    clean_config = config.model_copy(update={"min_nodes": 2, "out_dir": str(tmp_path / "clean")})
    reference = run_federation(make_grid(), clean_config, run_id=2)

    record = json.loads((run_dir / "rounds.jsonl").read_text())
    rejected = {item["site"]: item["reason"] for item in record["rejected"]}
    assert "NaN" in rejected["nan-site"] and "exceeds" in rejected["huge-site"]
    assert "is object" in rejected["pickle-site"] and "expected float32" in rejected["pickle-site"]
    assert sorted(record["train"]["sites"]) == ["site-1", "site-2"]
    failed = {item["site"]: item["reason"] for item in record["failures"]}
    assert "laptop went to sleep" in failed["nan-site"] and "huge-site" in failed
    # A site's own errors reach the server as their type only: no paths leave the clinic.
    assert (
        failed["node-105"].startswith("DataError at the site")
        and "secret" not in failed["node-105"]
    )
    attacked = RunStore(run_dir).load_state().arrays
    clean = RunStore(reference).load_state().arrays
    assert all(np.array_equal(attacked[name], clean[name]) for name in clean)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {item["site"] for item in summary["rejected"]} == {
        "nan-site",
        "huge-site",
        "pickle-site",
    }


def test_a_registered_clinic_cannot_speak_for_another(make_grid, make_config, tmp_path) -> None:
    """Deployment: the coordinator registered each SuperNode's name; node 102 is 'site-3' but
    replies as 'site-1', to replace site-1's update or push it out as a duplicate."""
    config = make_config(num_server_rounds=1, prewarm_rounds=0, min_nodes=3)
    registered = {100: "site-1", 101: "site-2", 102: "site-3"}
    grid = make_grid(hostile_app("site-1", lambda array: array), names=registered)
    run_dir = run_federation(grid, config, run_id=1)

    record = json.loads((run_dir / "rounds.jsonl").read_text())
    assert sorted(record["train"]["sites"]) == ["site-1", "site-2"]
    (rejected,) = record["rejected"]
    assert rejected["site"] == "site-3"
    assert "claims to be site 'site-1'" in rejected["reason"]
    assert "registered as 'site-3'" in rejected["reason"]


class Crash(Exception):
    """Stands in for the server process dying."""


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_resume_after_a_crash_matches_an_uninterrupted_run(
    make_grid, make_config, tmp_path, monkeypatch, strategy: str
) -> None:
    uninterrupted = make_config(
        num_server_rounds=4, strategy=strategy, out_dir=str(tmp_path / "whole")
    )
    expected = RunStore(run_federation(make_grid(), uninterrupted, run_id=1)).load_state()

    crashing = uninterrupted.model_copy(update={"out_dir": str(tmp_path / "crashed")})
    commit = RunStore.save_state

    def die_while_committing_round_3(store: RunStore, state: ResumeState) -> None:
        if state.round == 3:
            raise Crash
        commit(store, state)

    monkeypatch.setattr(RunStore, "save_state", die_while_committing_round_3)
    with pytest.raises(Crash):
        run_federation(make_grid(), crashing, run_id=2)
    store = RunStore(tmp_path / "crashed")
    assert store.load_state().round == 2
    assert [r.round for r in store.read_rounds()] == [1, 2, 3]  # round 3 never committed

    monkeypatch.setattr(RunStore, "save_state", commit)
    resumed = crashing.model_copy(update={"resume": True})
    run_federation(make_grid(), resumed, run_id=3)

    final = store.load_state()
    assert final.round == 4
    assert [r.round for r in store.read_rounds()] == [1, 2, 3, 4]
    for name, array in expected.arrays.items():
        np.testing.assert_allclose(final.arrays[name], array, rtol=0, atol=1e-5, err_msg=name)
    assert (store.run_dir / "global_model.pt").exists()


def test_a_used_run_directory_needs_resume_and_the_same_settings(make_config) -> None:
    config = make_config()
    store = RunStore(config.run_dir(0))
    store.save_state(ResumeState(1, initial_state(config), {}, fingerprint(config)))
    with pytest.raises(ConfigError, match="set resume=true"):
        run_federation(None, config, run_id=0)
    other = config.model_copy(update={"resume": True, "strategy": "fedmedian"})
    with pytest.raises(ConfigError, match="started with strategy='fedavg'"):
        run_federation(None, other, run_id=0)
