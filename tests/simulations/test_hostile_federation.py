"""One hostile clinic in a real federation (`hxr simulate`'s local SuperLink, Ray actors as
clinics, the clinics' ClientApp from `hostile_clinic.py`): over the rounds it sends every kind
of malformed reply. The run completes every round, each
reply is recorded with the site and the reason, and the final model equals that of the same run
in which the clinic's replies simply fail."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from server.run_store import RunStore
from simulations.federation import PROJECT_APP, SimulationSettings, simulate

ROUNDS = 5
# Three phantom clinics, one pre-warm round, then four fine-tuning rounds on 32 px images.
TINY_FEDERATION = {"data": "synthetic:72:3", "sites": 3, "num_server_rounds": ROUNDS}
TINY_FEDERATION |= {"prewarm_rounds": 1, "local_epochs": 1, "image_size": 32, "batch_size": 16}
TINY_FEDERATION |= {"gradcam_per_class": 1, "cpus": 2}
HONEST_CLIENT = 'clientapp = "client.client_app:app"'


def hostile_app(root: Path, clinic: str) -> Path:
    """A Flower app: the project's, with `hostile_clinic.<clinic>` as its ClientApp."""
    root.mkdir()
    shutil.copy(Path(__file__).with_name("hostile_clinic.py"), root)
    project = (PROJECT_APP / "pyproject.toml").read_text(encoding="utf-8")
    assert HONEST_CLIENT in project
    replaced = project.replace(HONEST_CLIENT, f'clientapp = "hostile_clinic:{clinic}"')
    (root / "pyproject.toml").write_text(replaced, encoding="utf-8")
    return root


def run(tmp_path: Path, clinic: str) -> RunStore:
    settings = SimulationSettings(**TINY_FEDERATION, out=tmp_path / clinic)
    return RunStore(simulate(settings, hostile_app(tmp_path / f"{clinic}-app", clinic)))


@pytest.mark.slow
def test_a_hostile_clinic_ends_no_round_and_has_no_influence(tmp_path: Path) -> None:
    attacked = run(tmp_path, "attacked")
    reference = run(tmp_path, "failing_clinic")

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
