"""The measurement engine behind `hxr bench`: training and inference speed and training memory.

Fairness rules: every model runs in the same process on the same synthetic batch, models are
interleaved over repeated trials (the order rotates every trial) and medians are reported, so a
burst of load from another program hits all models alike instead of one of them.

Peak training memory is measured in a fresh process per model and trial (multiprocessing spawn).
In a long-lived process the allocator keeps freed pages resident, so a second model would reuse
the first one's pages and its peak would hide under theirs; a fresh process starts from the same
idle baseline (torch imported and its thread pool started) for every model. The figure is what
`PeakMemoryMeter` reports for building the model and running its first training steps (process
RSS rise on CPU, peak allocated on CUDA), so it holds weights, gradients, AdamW state, the batch
and the activations kept for backward.
"""

from __future__ import annotations

import copy
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from itertools import pairwise
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hxr_model.errors import ConfigError
from hxr_model.metrics import PeakMemoryMeter
from hxr_model.models import build_model, check_model_name
from hxr_model.profiling import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    checkpoint_size_mb,
    count_macs,
    count_parameters,
)
from hxr_model.runtime import resolve_device
from hxr_model.text_table import format_table

NUM_CLASSES = 2
WARMUP_TRAIN_STEPS = 1
WARMUP_INFER_RUNS = 3
INFER_THROUGHPUT_RUNS = 3
MEMORY_TRAIN_STEPS = 2

Precision = Literal["fp32", "bf16"]
Device = Literal["cpu", "cuda"]


class BenchConfig(BaseModel):
    """What to measure; every field is a `hxr bench` option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(min_length=1)
    resolution: int = Field(default=224, ge=MIN_RESOLUTION, le=MAX_RESOLUTION)
    batch_size: int = Field(default=32, ge=1)
    device: Device = "cpu"
    precision: Precision = "fp32"
    threads: int | None = Field(default=None, ge=1)
    trials: int = Field(default=3, ge=1)
    train_steps: int = Field(default=3, ge=1)
    latency_runs: int = Field(default=30, ge=1)
    infer_batch_size: int = Field(default=32, ge=1)

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        for name in models:
            check_model_name(name)
        if len(set(models)) != len(models):
            raise ValueError("each model may be given only once")
        return models


class BenchResult(BaseModel):
    """One model's row: static costs plus medians over the trials."""

    model: str
    params: int
    macs: int
    checkpoint_mb: float
    train_images_per_s: float
    peak_train_memory_mb: float
    infer_latency_ms: float
    infer_images_per_s: float
    resolution: int
    batch_size: int
    device: Device
    precision: Precision
    threads: int
    trials: int


class _Trials(BaseModel):
    """Per-trial measurements of one model, reduced to medians at the end."""

    train_images_per_s: list[float] = []
    peak_train_memory_mb: list[float] = []
    infer_latency_ms: list[float] = []
    infer_images_per_s: list[float] = []


def run_benchmark(
    config: BenchConfig, on_progress: Callable[[str], None] | None = None
) -> list[BenchResult]:
    """Measure every model in `config`, interleaved over `config.trials` trials."""
    device = _resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    report = on_progress or (lambda _message: None)
    trainers = {name: _Trainer(name, config, device) for name in config.models}
    inference = {name: prepare_for_inference(trainer.model) for name, trainer in trainers.items()}
    trials = {name: _Trials() for name in config.models}
    for trial in range(config.trials):
        shift = trial % len(config.models)
        for name in config.models[shift:] + config.models[:shift]:
            report(f"trial {trial + 1}/{config.trials}: {name}")
            measured = trials[name]
            measured.train_images_per_s.append(trainers[name].images_per_s(config.train_steps))
            measured.peak_train_memory_mb.append(peak_training_memory_mb(name, config))
            measured.infer_latency_ms.append(_latency_ms(inference[name], config, device))
            measured.infer_images_per_s.append(_images_per_s(inference[name], config, device))
    return [_summarise(name, trainers[name].model, trials[name], config) for name in config.models]


def peak_training_memory_mb(name: str, config: BenchConfig) -> float:
    """Peak memory of training steps of model `name`, measured in a fresh spawned process."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_measure_training_memory_in_child, name, config).result()


def format_results(results: list[BenchResult]) -> str:
    """A plain-text table, one model a row, for people reading a terminal."""
    header = (
        "model",
        "params",
        "MACs",
        "ckpt MB",
        "train img/s",
        "train peak MB",
        "latency ms",
        "infer img/s",
    )
    rows = [
        (
            result.model,
            f"{result.params / 1e6:.2f}M",
            f"{result.macs / 1e6:.1f}M",
            f"{result.checkpoint_mb:.2f}",
            f"{result.train_images_per_s:.2f}",
            f"{result.peak_train_memory_mb:.0f}",
            f"{result.infer_latency_ms:.2f}",
            f"{result.infer_images_per_s:.2f}",
        )
        for result in results
    ]
    lines = [format_table(header, rows)]
    if results:
        first = results[0]
        lines.append(
            f"{first.resolution} px, train batch {first.batch_size}, {first.device} "
            f"{first.precision}, {first.threads} threads, medians of {first.trials} trial(s)"
        )
    return "\n".join(lines)


class _Trainer:
    """A model, its AdamW optimizer and one fixed synthetic batch, kept across trials."""

    def __init__(self, name: str, config: BenchConfig, device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = build_model(name, NUM_CLASSES).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters())
        size = (config.batch_size, 1, config.resolution, config.resolution)
        self.images = torch.rand(size, device=device)
        self.labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), device=device)
        self.config = config
        self.device = device

    def step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with _autocast(self.device, self.config.precision):
            loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()

    def images_per_s(self, steps: int) -> float:
        """Forward + backward + AdamW step throughput after a warm-up step."""
        for _ in range(WARMUP_TRAIN_STEPS):
            self.step()
        _synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        _synchronize(self.device)
        return self.config.batch_size * steps / (time.perf_counter() - start)


def _measure_training_memory_in_child(name: str, config: BenchConfig) -> float:
    """Runs in a fresh process: idle baseline, then build and train the model, report the rise."""
    device = _resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    _start_runtime(device)
    with PeakMemoryMeter(device) as meter:
        trainer = _Trainer(name, config, device)
        for _ in range(MEMORY_TRAIN_STEPS):
            trainer.step()
        _synchronize(device)
    return meter.peak_mb


def _start_runtime(device: torch.device) -> None:
    """Start the thread pool and kernels so their one-off memory is part of the idle baseline."""
    conv = nn.Conv2d(1, 1, 3).to(device)
    conv(torch.rand(1, 1, 8, 8, device=device)).sum().backward()


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy for fast CPU inference with the same outputs.

    Every BatchNorm2d that directly follows a Conv2d in a Sequential (the Conv-BN-activation
    layers of HybridNet-XR, MobileNetV2 and EfficientNet; ResNet's stem) is folded into the
    convolution's weights and bias, and tensors use the channels-last layout oneDNN prefers.
    """
    prepared = copy.deepcopy(model).eval()
    for module in prepared.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for (_, conv), (bn_name, bn) in pairwise(list(module.named_children())):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                folded = fuse_conv_bn_eval(conv, bn)
                conv.weight, conv.bias = folded.weight, folded.bias
                setattr(module, bn_name, nn.Identity())
    return prepared.to(memory_format=torch.channels_last)


def _latency_ms(model: nn.Module, config: BenchConfig, device: torch.device) -> float:
    """Median wall time of single-image forward passes."""
    image = torch.rand(1, 1, config.resolution, config.resolution, device=device)
    return statistics.median(_time_inference(model, image, config.latency_runs, config)) * 1000


def _images_per_s(model: nn.Module, config: BenchConfig, device: torch.device) -> float:
    size = (config.infer_batch_size, 1, config.resolution, config.resolution)
    batch = torch.rand(size, device=device)
    times = _time_inference(model, batch, INFER_THROUGHPUT_RUNS, config)
    return config.infer_batch_size / statistics.median(times)


def _time_inference(
    model: nn.Module, batch: torch.Tensor, runs: int, config: BenchConfig
) -> list[float]:
    times = []
    with torch.inference_mode(), _autocast(batch.device, config.precision):
        for _ in range(WARMUP_INFER_RUNS):
            model(batch)
        for _ in range(runs):
            _synchronize(batch.device)
            start = time.perf_counter()
            model(batch)
            _synchronize(batch.device)
            times.append(time.perf_counter() - start)
    return times


def _summarise(name: str, model: nn.Module, trials: _Trials, config: BenchConfig) -> BenchResult:
    return BenchResult(
        model=name,
        params=count_parameters(model),
        macs=count_macs(model, config.resolution),
        checkpoint_mb=checkpoint_size_mb(model),
        train_images_per_s=statistics.median(trials.train_images_per_s),
        peak_train_memory_mb=statistics.median(trials.peak_train_memory_mb),
        infer_latency_ms=statistics.median(trials.infer_latency_ms),
        infer_images_per_s=statistics.median(trials.infer_images_per_s),
        resolution=config.resolution,
        batch_size=config.batch_size,
        device=config.device,
        precision=config.precision,
        threads=torch.get_num_threads(),
        trials=config.trials,
    )


def _resolve_device(name: Device) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as error:
        raise ConfigError(f"--device {name}: {error}") from error


def _autocast(device: torch.device, precision: Precision) -> AbstractContextManager[object]:
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
