"""The honest-update study reads the ratios a run recorded and suggests a bound from them."""

from experiments.update_ratios import ratios_by_phase, report, suggested_bound
from server.round_record import RoundRecord
from server.run_store import RunStore


def test_ratios_are_read_per_phase_and_the_bound_has_a_floor(tmp_path) -> None:
    store = RunStore(tmp_path)
    store.append_round(RoundRecord(round=1, phase="prewarm", update_ratios={"a": 0.02}), ["x"])
    store.append_round(
        RoundRecord(round=2, phase="finetune", update_ratios={"a": 0.2, "b": 0.5}), ["x"]
    )
    phases = ratios_by_phase([tmp_path])
    assert phases == {"prewarm": [0.02], "finetune": [0.2, 0.5]}
    assert suggested_bound([0.02, 0.2, 0.5]) == 1.5
    assert suggested_bound([0.1]) == 1.0
    assert report(phases).endswith("suggested max-update-ratio: 1.50")
