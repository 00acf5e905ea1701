"""`hxr info` and `hxr bench` as a user calls them."""

import json

import pytest

from hxr_cli.main import main
from hxr_model.models import build_model
from hxr_model.profiling import count_macs

BENCH_KEYS = {
    "model",
    "params",
    "macs",
    "checkpoint_mb",
    "train_images_per_s",
    "peak_train_memory_mb",
    "infer_latency_ms",
    "infer_images_per_s",
}


def test_info_prints_parameters_macs_and_stage_table(capsys) -> None:
    assert main(["info", "hxr50", "--resolution", "64"]) == 0
    out = capsys.readouterr().out
    model = build_model("hxr50", 2)
    assert f"parameters: {sum(p.numel() for p in model.parameters()):,}" in out
    assert f"MACs: {count_macs(model, 64) / 1e6:.2f}M per image" in out
    table = out[out.index("\nstage") + 1 :].splitlines()
    assert table[1].startswith("encoder.stem") and "16 x 16" in table[1]  # 64 px at 1/4
    assert table[-1].startswith("head")


@pytest.mark.parametrize(
    "argv, problem",
    [(["info", "hxr50", "--resolution", "16"], "resolution"), (["info", "hxr999"], "hxr999")],
)
def test_info_user_errors_are_one_line(argv: list[str], problem: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hxr: error:") and problem in err and len(err.splitlines()) == 1


def test_bench_json_has_the_contract_keys(capsys) -> None:
    code = main(
        ["bench", "--models", "hxr50", "--resolution", "32", "--batch-size", "4", "--trials", "1",
         "--train-steps", "1", "--latency-runs", "2", "--threads", "1", "--json"]
    )  # fmt: skip
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0].keys() >= BENCH_KEYS
    row = rows[0]
    assert row["model"] == "hxr50" and row["resolution"] == 32 and row["batch_size"] == 4
    assert row["params"] == sum(p.numel() for p in build_model("hxr50", 2).parameters())
    assert all(row[key] > 0 for key in BENCH_KEYS - {"model"})


def test_bench_prewarm_phase_reports_the_prewarming_peak_and_chunk(capsys) -> None:
    code = main(
        ["bench", "--models", "hxr50", "--resolution", "32", "--trials", "1", "--latency-runs",
         "2", "--threads", "1", "--phase", "prewarm", "--prewarm-batch-size", "8", "--json"]
    )  # fmt: skip
    assert code == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["phases"] == ["prewarm"] and row["prewarm_batch_size"] == 8
    assert row["peak_prewarm_memory_mb"] > 0 and row["prewarm_chunk_size"] == 8
    assert row["peak_train_memory_mb"] is None


def test_bench_unknown_model_is_one_line_error(capsys) -> None:
    assert main(["bench", "--models", "hxr50,nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.splitlines()) == 1
