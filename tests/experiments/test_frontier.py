"""The frontier's bookkeeping: run order, the result store, the memory cache and the table."""

from pathlib import Path

import pytest

from experiments import frontier_memory
from experiments.frontier_memory import phase_memory, recipe_memory
from experiments.frontier_results import (
    append_row,
    read_results,
    read_rows,
    results_table,
    row_key,
    table_order,
)
from experiments.frontier_runs import CENTRALIZED, TEACHER, FrontierSettings, configurations


def settings_in(out: Path) -> FrontierSettings:
    return FrontierSettings(
        out=out, data_root=out / "data", epochs=1, prewarm_epochs=1, seed=0, threads=1
    )


def test_the_teacher_trains_before_the_rows_distilled_from_it() -> None:
    order = list(configurations(["hxr50", "resnet18", "mobilenet_v2"]))
    assert order == [
        ("hxr50", "scratch"),
        ("hxr50", "prewarmed"),
        ("resnet18", "scratch"),
        ("mobilenet_v2", "scratch"),
        ("hxr50", "distilled"),
    ]


def test_results_append_and_read_back_with_the_centralized_default(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    assert read_results(path) == []
    append_row(path, {"dataset": "cxr4", "model": "hxr50", "variant": "scratch"})
    append_row(path, {"dataset": "cxr4", "setting": "federated", "model": "hxr150"})
    first, second = read_results(path)
    assert first["setting"] == CENTRALIZED
    assert second["setting"] == "federated"
    assert row_key(first) == ("cxr4", CENTRALIZED, "hxr50", "scratch")


def test_table_lists_datasets_as_configured_and_centralized_rows_first() -> None:
    fields = ("dataset", "setting", "model", "variant")
    rows = [
        dict(zip(fields, values, strict=True))
        for values in [
            ("cxr4", CENTRALIZED, "hxr50", "scratch"),
            ("pneumoniamnist", "federated", "hxr150", "prewarmed"),
            ("pneumoniamnist", CENTRALIZED, "resnet18", "scratch"),
            ("pneumoniamnist", CENTRALIZED, "hxr50", "distilled"),
        ]
    ]
    ordered = sorted(rows, key=table_order)
    assert [(row["dataset"], row["model"]) for row in ordered] == [
        ("pneumoniamnist", "hxr50"),
        ("pneumoniamnist", "resnet18"),
        ("pneumoniamnist", "hxr150"),
        ("cxr4", "hxr50"),
    ]


def test_table_writes_n_a_for_figures_a_setting_does_not_measure() -> None:
    row = dict(dataset="cxr4", setting="local-only", model="hxr150", variant="prewarmed")
    row |= dict(
        accuracy=0.71234, balanced_accuracy=0.7, auc=None, peak_memory_mb=None, seconds=12.6
    )
    header, separator, line = results_table([row]).splitlines()
    assert header.startswith("| data | setting |") and header.endswith("| seconds |")
    assert separator == "|---|" + "---|" * 8
    assert line == "| cxr4 | local-only | hxr150 | prewarmed | 0.7123 | 0.7000 | n/a | n/a | 13 |"


@pytest.fixture
def measured_phases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FrontierSettings:
    """Settings whose memory.jsonl already holds every phase; measuring again would fail."""
    settings = settings_in(tmp_path)
    for model, phase, peak in [
        ("hxr50", "finetune", 35.0),
        ("hxr50", "prewarm", 85.0),
        ("hxr50", "distill", 120.0),
        (TEACHER, "finetune", 245.0),
    ]:
        append_row(
            tmp_path / "memory.jsonl",
            {"dataset": "cxr4", "model": model, "phase": phase, "peak_memory_mb": peak},
        )

    def no_fresh_process(_method: str) -> None:
        raise AssertionError("a remembered phase was measured again")

    monkeypatch.setattr(frontier_memory.multiprocessing, "get_context", no_fresh_process)
    return settings


@pytest.mark.parametrize(
    ("variant", "peak"),
    [("scratch", 35.0), ("prewarmed", 85.0), ("distilled", 245.0)],
)
def test_a_recipe_costs_its_heaviest_phase_and_a_distilled_one_its_teacher(
    measured_phases: FrontierSettings, variant: str, peak: float
) -> None:
    row = {"dataset": "cxr4", "model": "hxr50", "variant": variant}
    assert recipe_memory(row, measured_phases) == peak


def test_a_phase_not_remembered_is_measured_once_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_in(tmp_path)
    calls = []

    class OneProcessPool:
        def __init__(self, processes: int) -> None:
            assert processes == 1

        def __enter__(self) -> "OneProcessPool":
            return self

        def __exit__(self, *_exc: object) -> None:
            return None

        def apply(self, function: object, args: tuple) -> float:
            calls.append(args[:3])
            return 42.0

    class SpawnContext:
        Pool = OneProcessPool

    def spawn_only(method: str) -> SpawnContext:
        assert method == "spawn"
        return SpawnContext()

    monkeypatch.setattr(frontier_memory.multiprocessing, "get_context", spawn_only)
    assert phase_memory("cxr4", "hxr150", "prewarm", settings) == 42.0
    assert phase_memory("cxr4", "hxr150", "prewarm", settings) == 42.0
    assert calls == [("cxr4", "hxr150", "prewarm")]
    assert read_rows(tmp_path / "memory.jsonl") == [
        {"dataset": "cxr4", "model": "hxr150", "phase": "prewarm", "peak_memory_mb": 42.0}
    ]
