from pathlib import Path

import numpy as np
import pytest
import torch

from hxr_model.errors import CheckpointError
from server.round_record import RoundRecord, StageResults
from server.run_store import ResumeState, RunStore

CLASSES = ["normal", "pneumonia"]


def test_server_state_round_trips(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    state = ResumeState(
        round=3,
        arrays={"encoder.w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        strategy={"finetune": {"m_t": {"encoder.w": np.ones((2, 3), np.float32)}}},
        fingerprint={"model": "hxr50", "classes": CLASSES},
    )
    store.save_state(state)
    loaded = store.load_state()
    assert loaded.round == 3 and loaded.fingerprint == state.fingerprint
    assert np.array_equal(loaded.arrays["encoder.w"], state.arrays["encoder.w"])
    assert np.array_equal(loaded.strategy["finetune"]["m_t"]["encoder.w"], np.ones((2, 3)))
    assert not list(tmp_path.rglob("*.tmp"))


def record(number: int) -> RoundRecord:
    return RoundRecord(
        round=number,
        phase="finetune",
        train=StageResults(sites={"north": {"train-loss": 1.0 / number}}),
        evaluate=StageResults(sites={"north": {"per-class-recall": [0.5, np.nan]}}),
    )


def test_records_of_uncommitted_rounds_are_discarded(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    for number in (1, 2, 3):
        store.append_round(record(number), CLASSES)
    store.append_round(record(3), CLASSES)  # a re-run round replaces its stale copy
    assert [r.round for r in store.read_rounds()] == [1, 2, 3]
    table = (tmp_path / "sites" / "north.csv").read_text().splitlines()
    assert table[0] == (
        "round,phase,train:train-loss,"
        "evaluate:per-class-recall:normal,evaluate:per-class-recall:pneumonia"
    )
    assert table[1] == "1,finetune,1.0,0.5,"  # NaN (undefined recall) is written as empty
    store.discard_after(1, CLASSES)
    assert [r.round for r in store.read_rounds()] == [1]
    assert len((tmp_path / "sites" / "north.csv").read_text().splitlines()) == 2


def test_a_state_file_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (marker,))

    store = RunStore(tmp_path)
    store.checkpoints_dir.mkdir(parents=True)
    torch.save({"format": "hybridnet-xr-federation-state", "payload": RunsCode()}, store.state_path)
    with pytest.raises(CheckpointError, match="unreadable server state"):
        store.load_state()
    assert not marker.exists()
