"""`hxr simulate` killed outright (SIGKILL to its process group, as a power cut or the OOM killer
would) after a round, then started again with `--resume`: the real-process counterpart of
tests/server/test_federation.py's in-process crash test.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from hxr_model.checkpoint import load_checkpoint
from server.run_store import RunStore, weights_digest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
# The process bookkeeping lives with the deployment tests; tests/ is not a package, so load it
# by path (registered, because dataclasses look their module up in sys.modules).
_spec = importlib.util.spec_from_file_location(
    "deploy_harness", REPO / "tests" / "deploy" / "harness.py"
)
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness
_spec.loader.exec_module(harness)

if not sys.platform.startswith("linux"):
    pytest.skip("process-tree checks read /proc (Linux only)", allow_module_level=True)

ROUNDS = 4
KILL_AFTER = 2
SECONDS = 900
SIMULATE = [
    *("simulate", "--data", "synthetic:96:3", "--sites", "3", "--cpus", "1"),
    *("--rounds", str(ROUNDS), "--prewarm-rounds", "1", "--image-size", "32"),
    *("--batch-size", "16", "--gradcam-per-class", "0", "--local-epochs", "1"),
    "--no-local-baselines",
]


def test_a_killed_simulation_resumes_after_its_last_completed_round(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    processes = harness.Processes(tmp_path / "logs", harness.environment(tmp_path))
    store = RunStore(tmp_path / "run")
    command = [str(harness.BIN / "hxr"), *SIMULATE, "--out", str(store.run_dir)]
    wait_for = harness.wait_for

    def running(name: str) -> bool:
        processes.tree()  # note Ray's processes while they still hang below ours
        return processes.started[name].poll() is None

    def none_left(what: str) -> None:
        def left() -> str:
            return " ".join(map(str, sorted(harness.alive(processes.seen))))

        wait_for(lambda: not left(), 60, f"{what} to end", lambda: f"still running: {left()}")

    try:
        first = processes.start("first", command)

        def committed() -> bool:
            assert running("first"), processes.log("first")
            if len(store.read_rounds()) < KILL_AFTER:
                return False
            state = store.load_state()
            return state is not None and state.round >= KILL_AFTER

        wait_for(committed, SECONDS, f"round {KILL_AFTER}", lambda: processes.log("first"))
        assert len(processes.tree()) >= 4  # hxr, Ray's daemons and its clinic workers
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        none_left("the killed run's processes")

        at_kill = store.load_state()
        completed = at_kill.round
        assert KILL_AFTER <= completed < ROUNDS
        kept = [r for r in store.read_rounds() if r.round <= completed]
        # The round's model checkpoint and the resume state hold the same classifier.
        checkpoint = load_checkpoint(store.round_checkpoint(completed)).model.state_dict()
        for name, tensor in checkpoint.items():
            if tensor.is_floating_point():
                np.testing.assert_array_equal(tensor.numpy(), at_kill.arrays[name], err_msg=name)

        resumed = processes.start("resumed", [*command, "--resume"])
        wait_for(lambda: not running("resumed"), SECONDS, "the resumed run", lambda: "")
        assert resumed.returncode == 0, processes.log("resumed")
        none_left("the resumed run's processes")
    finally:
        processes.stop()

    rounds = store.read_rounds()
    assert [r.round for r in rounds] == list(range(1, ROUNDS + 1))  # none lost or repeated
    assert rounds[:completed] == kept  # completed rounds were not run again
    assert rounds[completed].weights_sha256["start"] == weights_digest(at_kill.arrays)
    for before, after in pairwise(rounds):
        assert after.weights_sha256["start"] == before.weights_sha256["end"]
    assert store.load_state().round == ROUNDS
    assert load_checkpoint(store.run_dir / "global_model.pt").model_name == "hxr50"
