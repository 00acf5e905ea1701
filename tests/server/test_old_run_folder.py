"""A run folder written before rounds became typed `RoundRecord`s still reads and resumes.

`fixtures/rounds-written-before-round-record.jsonl` is the `rounds.jsonl` of a two-round run of
the conftest federation, written by the code that kept rounds as plain dicts. `server_state.pt`
kept its format (`STATE_VERSION` 1), so the test writes it with today's `RunStore`.
"""

import json
import shutil
from pathlib import Path

from server.federation import fingerprint, initial_state, run_federation
from server.round_record import RoundRecord
from server.run_store import ResumeState, RunStore, weights_digest

OLD_ROUNDS = Path(__file__).parent / "fixtures" / "rounds-written-before-round-record.jsonl"


def test_old_round_lines_read_back_typed_and_write_back_with_nothing_lost(tmp_path) -> None:
    lines = OLD_ROUNDS.read_text(encoding="utf-8").splitlines()
    records = [RoundRecord.model_validate_json(line) for line in lines]
    assert [(r.round, r.phase) for r in records] == [(1, "prewarm"), (2, "finetune")]
    assert records[1].gradcam["site-1"][0].file.startswith("gradcam/site-1/round-002/")
    store = RunStore(tmp_path)
    shutil.copy(OLD_ROUNDS, store.rounds_path)
    store.discard_after(2, ["unused"] * 6)  # rewrites rounds.jsonl through RoundRecord
    rewritten = [json.loads(line) for line in store.rounds_path.read_text().splitlines()]
    for old, new in zip((json.loads(line) for line in lines), rewritten, strict=True):
        assert new == old | {"update_ratios": {}, "weighted_examples": {}}  # fields added since


def test_a_run_folder_written_by_the_old_code_resumes(make_grid, make_config, tmp_path) -> None:
    config = make_config(num_server_rounds=3, resume=True)
    store = RunStore(config.run_dir(0))
    store.rounds_path.parent.mkdir(parents=True)
    shutil.copy(OLD_ROUNDS, store.rounds_path)
    store.save_state(ResumeState(1, initial_state(config), {}, fingerprint(config)))

    run_federation(make_grid(), config, run_id=0)

    records = store.read_rounds()
    assert [r.round for r in records] == [1, 2, 3]
    old_first = RoundRecord.model_validate_json(OLD_ROUNDS.read_text().splitlines()[0])
    assert records[0] == old_first  # kept as written; round 2 ran again after the commit point
    assert records[1].weights_sha256["start"] == weights_digest(initial_state(config))
    assert records[2].weights_sha256["start"] == records[1].weights_sha256["end"]
    assert json.loads((store.run_dir / "summary.json").read_text())["rounds_completed"] == 3
