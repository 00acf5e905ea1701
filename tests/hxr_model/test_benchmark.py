"""The `hxr bench` engine on a tiny configuration: structure and plausible figures, no timings."""

import pytest
import torch
from pydantic import ValidationError

from hxr_model import benchmark
from hxr_model.benchmark import BenchConfig, format_results, prepare_for_inference, run_benchmark
from hxr_model.errors import ConfigError
from hxr_model.models import MODELS, build_model
from hxr_model.profiling import count_macs, count_parameters

# The patch stem's ReLU follows a PatchConv, whose forward is its own: it stays a module.
TINY = {"resolution": 32, "batch_size": 4, "train_steps": 1, "latency_runs": 2}
# Weights, gradients and the two AdamW moments: 4 float32 copies of every parameter.
TRAINING_COPY_BYTES = 4 * 4


def test_tiny_benchmark_reports_plausible_figures_for_each_model() -> None:
    config = BenchConfig(models=["hxr50", "mobilenet_v2"], trials=1, threads=1, **TINY)
    results = run_benchmark(config)
    assert [result.model for result in results] == ["hxr50", "mobilenet_v2"]
    for result in results:
        model = build_model(result.model, 2)
        assert result.params == count_parameters(model)
        assert result.macs == count_macs(model, 32)
        assert result.checkpoint_mb > result.params * 4 / 2**20
        assert result.train_images_per_s > 0
        assert result.infer_latency_ms > 0 and result.infer_images_per_s > 0
        # Training memory is at least the weights, gradients and optimiser state, and nowhere
        # near the machine's size for a 32 px batch of 4.
        fixed_mb = result.params * TRAINING_COPY_BYTES / 2**20
        assert 0.9 * fixed_mb < result.peak_train_memory_mb < 1000
        assert (result.resolution, result.batch_size, result.threads) == (32, 4, 1)
    hxr, mobilenet = results
    assert mobilenet.peak_train_memory_mb > hxr.peak_train_memory_mb
    table = format_results(results)
    assert table.splitlines()[1].startswith("hxr50") and "medians of 1 trial" in table


def test_models_are_interleaved_and_medians_taken(monkeypatch) -> None:
    readings = iter([10.0, 40.0, 20.0, 50.0, 30.0, 60.0])  # trial by trial, in visiting order
    monkeypatch.setattr(benchmark, "peak_training_memory_mb", lambda name, config: next(readings))
    visits: list[str] = []
    config = BenchConfig(models=["hxr50", "mobilenet_v2"], trials=3, threads=1, **TINY)
    results = run_benchmark(config, on_progress=visits.append)
    assert visits == [
        "trial 1/3: hxr50",
        "trial 1/3: mobilenet_v2",
        "trial 2/3: mobilenet_v2",
        "trial 2/3: hxr50",
        "trial 3/3: hxr50",
        "trial 3/3: mobilenet_v2",
    ]
    by_model = {result.model: result.peak_train_memory_mb for result in results}
    assert by_model == {"hxr50": 30.0, "mobilenet_v2": 40.0}  # medians of 10/50/30 and 40/20/60


def test_prewarm_phase_measures_the_budgeted_chunk_in_a_fresh_process() -> None:
    """A real child run: the contrastive batch stays, the budget picks a smaller chunk, and the
    fine-tuning columns are left out when only pre-warming is asked for."""
    settings = {**TINY, "resolution": 64}
    unbounded = BenchConfig(
        models=["hxr50"], trials=1, threads=1, phases=["prewarm"], prewarm_batch_size=24, **settings
    )
    bounded = unbounded.model_copy(update={"max_memory_mb": 4.0})
    (whole,) = run_benchmark(unbounded)
    (chunked,) = run_benchmark(bounded)
    assert whole.prewarm_chunk_size == 24 and 1 <= chunked.prewarm_chunk_size < 24
    for result in (whole, chunked):
        assert result.train_images_per_s is None and result.peak_train_memory_mb is None
        assert 0 < result.peak_prewarm_memory_mb < 1000 and result.prewarm_batch_size == 24
    table = format_results([chunked])
    assert "pre-warm peak MB" in table and "train peak MB" not in table
    assert "pre-warm batch 24 pairs (budget 4 MB;" in table
    too_small = bounded.model_copy(update={"max_memory_mb": 0.5})
    (refused,) = run_benchmark(too_small)
    assert refused.peak_prewarm_memory_mb is None and refused.prewarm_chunk_size is None
    assert "n/a" in format_results([refused]).splitlines()[1]


def test_both_phases_are_interleaved_with_medians(monkeypatch) -> None:
    readings = iter([(10.0, 4), (30.0, 4), (20.0, 4)])
    monkeypatch.setattr(benchmark, "peak_training_memory_mb", lambda name, config: 5.0)
    monkeypatch.setattr(benchmark, "peak_prewarm_memory_mb", lambda name, config: next(readings))
    config = BenchConfig(
        models=["hxr50"], trials=3, threads=1, phases=["finetune", "prewarm"], **TINY
    )
    (result,) = run_benchmark(config)
    assert result.peak_prewarm_memory_mb == 20.0 and result.prewarm_chunk_size == 4
    assert result.peak_train_memory_mb == 5.0 and result.train_images_per_s > 0
    header = format_results([result]).splitlines()[0]
    assert header.index("train peak MB") < header.index("pre-warm peak MB")


def test_bf16_autocast_runs_on_cpu(monkeypatch) -> None:
    monkeypatch.setattr(benchmark, "peak_training_memory_mb", lambda name, config: 1.0)
    config = BenchConfig(models=["hxr50"], trials=1, threads=1, precision="bf16", **TINY)
    (result,) = run_benchmark(config)
    assert result.precision == "bf16"
    assert result.train_images_per_s > 0 and result.infer_latency_ms > 0


@pytest.mark.parametrize(
    "field, value",
    [
        ("models", ["hxr999"]),
        ("models", []),
        ("models", ["hxr50", "hxr50"]),
        ("resolution", 16),
        ("phases", ["prewarm", "prewarm"]),
        ("phases", ["distill"]),
        ("phases", []),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    settings = {"models": ["hxr50"], field: value}
    with pytest.raises(ValidationError, match=field):
        BenchConfig(**settings)


def test_cuda_request_without_a_gpu_is_a_user_error() -> None:
    if benchmark.torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="cuda"):
        run_benchmark(BenchConfig(models=["hxr50"], device="cuda", **TINY))


@pytest.mark.parametrize("name", list(MODELS))
def test_inference_copy_folds_batch_norm_fuses_activations_and_keeps_outputs(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 2)
    with torch.no_grad():
        model(torch.rand(8, 1, 64, 64))  # training-mode pass: non-trivial running statistics
    prepared = prepare_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.encoder.modules())
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # Every convolution, HybridNet-XR's patch stem included, runs as one oneDNN kernel, and
    # every activation of these models alone reads a convolution (or its residual sum), so
    # each runs inside that kernel.
    left = [m for m in prepared.encoder.modules() if type(m) in benchmark.FUSED_ACTIVATIONS]
    fused = [m for m in prepared.encoder.modules() if isinstance(m, benchmark.OneDnnConv2d)]
    convolutions = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(fused) == len(convolutions) and any(m.activation for m in fused)
    assert not left
    for shape in ((1, 1, 64, 64), (3, 1, 96, 96)):
        images = torch.rand(shape)
        with torch.inference_mode():
            torch.testing.assert_close(prepared(images), model.eval()(images), rtol=0, atol=1e-5)
