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
and the activations kept for backward. Pre-warming's peak (`phases` with "prewarm") is measured
the same way around `prewarm_encoder` itself, the code `hxr train` and a clinic run, on a
synthetic contrastive batch under the same memory budget.
"""

from __future__ import annotations

import copy
import multiprocessing
import operator
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import TensorDataset

from hxr_model.errors import ConfigError
from hxr_model.metrics import PeakMemoryMeter
from hxr_model.models import RadiographClassifier, build_model, check_model_name
from hxr_model.models.hybridnet import PatchConv
from hxr_model.prewarm import PrewarmConfig, prewarm_encoder
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
Phase = Literal["finetune", "prewarm"]
Measured = TypeVar("Measured")


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
    phases: list[Phase] = Field(default=["finetune"], min_length=1)
    # Pre-warming: image pairs per contrastive batch, and the budget that picks its chunk.
    prewarm_batch_size: int = Field(default=256, ge=2, le=4096)
    max_memory_mb: float | None = Field(default=None, gt=0)

    @field_validator("phases")
    @classmethod
    def _distinct_phases(cls, phases: list[Phase]) -> list[Phase]:
        if len(set(phases)) != len(phases):
            raise ValueError("each phase may be given only once")
        return phases

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        for name in models:
            check_model_name(name)
        if len(set(models)) != len(models):
            raise ValueError("each model may be given only once")
        return models


class BenchResult(BaseModel):
    """One model's row: static costs plus medians over the trials (None: phase not measured)."""

    model: str
    params: int
    macs: int
    checkpoint_mb: float
    train_images_per_s: float | None
    peak_train_memory_mb: float | None
    peak_prewarm_memory_mb: float | None
    prewarm_chunk_size: int | None  # image pairs in the network at once
    infer_latency_ms: float
    infer_images_per_s: float
    resolution: int
    batch_size: int
    phases: list[Phase]
    prewarm_batch_size: int | None
    max_memory_mb: float | None
    device: Device
    precision: Precision
    threads: int
    trials: int


class _Trials(BaseModel):
    """Per-trial measurements of one model, reduced to medians at the end."""

    train_images_per_s: list[float] = []
    peak_train_memory_mb: list[float] = []
    peak_prewarm_memory_mb: list[float] = []
    prewarm_chunk_size: list[int] = []
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
    inference = {
        name: prepare_for_inference(trainer.model, config.precision)
        for name, trainer in trainers.items()
    }
    trials = {name: _Trials() for name in config.models}
    for trial in range(config.trials):
        shift = trial % len(config.models)
        for name in config.models[shift:] + config.models[:shift]:
            report(f"trial {trial + 1}/{config.trials}: {name}")
            measured = trials[name]
            if "finetune" in config.phases:
                measured.train_images_per_s.append(trainers[name].images_per_s(config.train_steps))
                measured.peak_train_memory_mb.append(peak_training_memory_mb(name, config))
            if "prewarm" in config.phases:
                prewarm = peak_prewarm_memory_mb(name, config)
                if prewarm is not None:
                    measured.peak_prewarm_memory_mb.append(prewarm[0])
                    measured.prewarm_chunk_size.append(prewarm[1])
            measured.infer_latency_ms.append(_latency_ms(inference[name], config, device))
            measured.infer_images_per_s.append(_images_per_s(inference[name], config, device))
    return [_summarise(name, trainers[name].model, trials[name], config) for name in config.models]


def peak_training_memory_mb(name: str, config: BenchConfig) -> float:
    """Peak memory of training steps of model `name`, measured in a fresh spawned process."""
    return _in_fresh_process(_measure_training_memory_in_child, name, config)


def peak_prewarm_memory_mb(name: str, config: BenchConfig) -> tuple[float, int] | None:
    """Peak memory of pre-warming steps of model `name` in a fresh spawned process, and the
    chunk (image pairs at once) the memory budget chose; None when the model cannot pre-warm
    within the budget even one pair at a time."""
    return _in_fresh_process(_measure_prewarm_memory_in_child, name, config)


def _in_fresh_process(
    measure: Callable[[str, BenchConfig], Measured], name: str, config: BenchConfig
) -> Measured:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure, name, config).result()


Column = tuple[str, Callable[[BenchResult], str]]
STATIC_COLUMNS: list[Column] = [
    ("model", lambda r: r.model),
    ("params", lambda r: f"{r.params / 1e6:.2f}M"),
    ("MACs", lambda r: f"{r.macs / 1e6:.1f}M"),
    ("ckpt MB", lambda r: f"{r.checkpoint_mb:.2f}"),
]
PHASE_COLUMNS: dict[Phase, list[Column]] = {
    "finetune": [
        ("train img/s", lambda r: f"{r.train_images_per_s:.2f}"),
        ("train peak MB", lambda r: f"{r.peak_train_memory_mb:.0f}"),
    ],
    "prewarm": [
        ("pre-warm peak MB", lambda r: _cell(r.peak_prewarm_memory_mb, "{:.0f}")),
        ("chunk", lambda r: _cell(r.prewarm_chunk_size, "{}")),
    ],
}
INFERENCE_COLUMNS: list[Column] = [
    ("latency ms", lambda r: f"{r.infer_latency_ms:.2f}"),
    ("infer img/s", lambda r: f"{r.infer_images_per_s:.2f}"),
]


def _cell(value: float | None, pattern: str) -> str:
    """A measured figure, or `n/a` for a model that cannot pre-warm within the budget."""
    return "n/a" if value is None else pattern.format(value)


def format_results(results: list[BenchResult]) -> str:
    """A plain-text table, one model a row, for people reading a terminal."""
    if not results:
        return ""
    first = results[0]
    columns = STATIC_COLUMNS.copy()
    for phase in first.phases:
        columns += PHASE_COLUMNS[phase]
    columns += INFERENCE_COLUMNS
    rows = [[cell(result) for _, cell in columns] for result in results]
    footer = f"{first.resolution} px, train batch {first.batch_size}"
    if "prewarm" in first.phases:
        budget = "none" if first.max_memory_mb is None else f"{first.max_memory_mb:g} MB"
        footer += f", pre-warm batch {first.prewarm_batch_size} pairs (budget {budget}; n/a: "
        footer += "does not fit even one pair at a time)"
    footer += (
        f", {first.device} {first.precision}, {first.threads} threads, "
        f"medians of {first.trials} trial(s)"
    )
    return "\n".join([format_table([header for header, _ in columns], rows), footer])


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


def _measure_prewarm_memory_in_child(name: str, config: BenchConfig) -> tuple[float, int] | None:
    """Runs in a fresh process: idle baseline, then build the model and pre-warm it for a few
    steps of one synthetic contrastive batch; report the rise and the chunk used.

    The images exist before the baseline, as a site's data set does when training starts; the
    batch the loader assembles from them is counted.
    """
    device = _resolve_device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    _start_runtime(device)
    size = (config.prewarm_batch_size, 1, config.resolution, config.resolution)
    images = TensorDataset(torch.rand(size), torch.zeros(config.prewarm_batch_size))
    settings = PrewarmConfig(
        epochs=MEMORY_TRAIN_STEPS,
        batch_size=config.prewarm_batch_size,
        max_memory_mb=config.max_memory_mb,
        device=config.device,
        progress=False,
    )
    with PeakMemoryMeter(device) as meter:
        torch.manual_seed(0)
        try:
            result = prewarm_encoder(build_model(name, NUM_CLASSES), images, settings)
        except ConfigError:
            return None
        _synchronize(device)
    return meter.peak_mb, result.chunk_size


def _start_runtime(device: torch.device) -> None:
    """Start the thread pool and kernels so their one-off memory is part of the idle baseline."""
    conv = nn.Conv2d(1, 1, 3).to(device)
    conv(torch.rand(1, 1, 8, 8, device=device)).sum().backward()


def prepare_for_inference(
    model: RadiographClassifier, precision: Precision = "fp32"
) -> RadiographClassifier:
    """An eval-mode copy for fast CPU inference with the same outputs (to float rounding).

    Every model gets the same rewrite of its encoder's graph (traced with torch.fx), in the
    channels-last layout oneDNN prefers:
    - a BatchNorm2d that alone reads a convolution's output is folded into the convolution's
      weights and bias;
    - modules that do nothing in eval mode (Identity, Dropout) leave the graph;
    - on CPU with oneDNN, every plain convolution (PLAIN_CONVOLUTIONS) gets its weights
      reordered once, ahead of time, into oneDNN's own layout, and takes into its kernel what
      alone reads its output: a residual addition, an activation (ReLU, ReLU6, Hardswish,
      Hardsigmoid, SiLU), or an addition and then an activation. Each fused operation is one
      pass over memory fewer. These kernels run in float32 (autocast does not reach them), so
      bf16 keeps the plain ones.
    """
    prepared = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    encoder = fx.GraphModule(prepared.encoder, _ConvolutionLeaves().trace(prepared.encoder))
    _fold_batch_norms(encoder)
    _drop_no_ops(encoder)
    on_cpu = all(parameter.device.type == "cpu" for parameter in encoder.parameters())
    if on_cpu and precision == "fp32" and torch.backends.mkldnn.is_available():
        # Shapes of every node for one small radiograph: an addition is fused only where it
        # adds two maps of the same shape, which is what the fused kernel computes.
        with torch.no_grad():
            ShapeProp(encoder).propagate(torch.rand(1, 1, SHAPE_PROBE_SIZE, SHAPE_PROBE_SIZE))
        _fuse_into_onednn_convolutions(encoder)
    encoder.graph.lint()
    encoder.delete_all_unused_submodules()
    encoder.recompile()
    prepared.encoder = encoder
    return prepared


# Activations oneDNN applies inside a convolution kernel: its post-op name and scalars.
FUSED_ACTIVATIONS: dict[type[nn.Module], tuple[str, list[float]]] = {
    nn.ReLU: ("relu", []),
    nn.ReLU6: ("hardtanh", [0.0, 6.0]),
    nn.Hardswish: ("hardswish", []),
    nn.Hardsigmoid: ("hardsigmoid", []),
    nn.SiLU: ("swish", []),
}
# Convolutions the fused kernel computes exactly: Conv2d itself, and PatchConv, which computes a
# Conv2d's function in its own way only for a faster backward pass.
PLAIN_CONVOLUTIONS = (nn.Conv2d, PatchConv)
RESIDUAL_ADDITIONS = {operator.add, operator.iadd, torch.add}
NO_OPS_IN_EVAL = (nn.Identity, nn.Dropout)
SHAPE_PROBE_SIZE = 64


class _ConvolutionLeaves(fx.Tracer):
    """Keeps every convolution (subclasses too, whose forward may differ) one module node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.Conv2d) or super().is_leaf_module(module, qualified_name)


class OneDnnConv2d(nn.Module):
    """A Conv2d run by oneDNN with weights reordered once, plus the fused residual addition
    (`forward(x, residual)`) and activation."""

    def __init__(self, conv: nn.Conv2d, activation: tuple[str, list[float]] | None) -> None:
        super().__init__()
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        weight = torch.ops.mkldnn._reorder_convolution_weight(conv.weight.detach(), *self.geometry)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())
        self.activation = activation

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        name, scalars = self.activation or ("none", [])
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, *self.geometry, name, scalars, None
            )
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, *self.geometry, "add", None,
            None if self.activation is None else name, scalars, None,
        )  # fmt: skip


def _module(graph: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return graph.get_submodule(str(node.target)) if node.op == "call_module" else None


def _only_reader(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _fold_batch_norms(graph: fx.GraphModule) -> None:
    for node in list(graph.graph.nodes):
        conv, reader = _module(graph, node), _only_reader(node)
        if not isinstance(conv, nn.Conv2d) or reader is None:
            continue
        norm = _module(graph, reader)
        if type(norm) is nn.BatchNorm2d:
            folded = fuse_conv_bn_eval(conv, norm)
            conv.weight, conv.bias = folded.weight, folded.bias
            reader.replace_all_uses_with(node)
            graph.graph.erase_node(reader)


def _drop_no_ops(graph: fx.GraphModule) -> None:
    for node in list(graph.graph.nodes):
        if isinstance(_module(graph, node), NO_OPS_IN_EVAL):
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)


def _fuse_into_onednn_convolutions(graph: fx.GraphModule) -> None:
    for index, node in enumerate(list(graph.graph.nodes)):
        conv = _module(graph, node)
        if (
            type(conv) not in PLAIN_CONVOLUTIONS
            or isinstance(conv.padding, str)
            or conv.padding_mode != "zeros"
        ):
            continue
        fused, inputs = [node], [node.args[0]]
        reader = _only_reader(node)
        if reader is not None and _is_residual_addition(reader):
            fused.append(reader)
            inputs.append(next(arg for arg in reader.args if arg is not node))
            reader = _only_reader(reader)
        activation = None if reader is None else _module(graph, reader)
        if type(activation) in FUSED_ACTIVATIONS:
            fused.append(reader)
        name = f"onednn_conv_{index}"
        graph.add_submodule(name, OneDnnConv2d(conv, FUSED_ACTIVATIONS.get(type(activation))))
        with graph.graph.inserting_after(fused[-1]):
            replacement = graph.graph.call_module(name, tuple(inputs))
        replacement.meta = dict(fused[-1].meta)  # its shape, for the additions after it
        fused[-1].replace_all_uses_with(replacement)
        for done in reversed(fused):
            graph.graph.erase_node(done)


def _is_residual_addition(node: fx.Node) -> bool:
    """`a + b` of two different maps of the same shape (no broadcasting)."""
    if not (
        node.op == "call_function"
        and node.target in RESIDUAL_ADDITIONS
        and len(node.args) == 2
        and not node.kwargs
        and all(isinstance(arg, fx.Node) for arg in node.args)
        and node.args[0] is not node.args[1]
    ):
        return False
    shapes = [arg.meta.get("tensor_meta") for arg in node.args if isinstance(arg, fx.Node)]
    return None not in shapes and shapes[0].shape == shapes[1].shape


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


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _summarise(name: str, model: nn.Module, trials: _Trials, config: BenchConfig) -> BenchResult:
    prewarm = "prewarm" in config.phases
    return BenchResult(
        model=name,
        params=count_parameters(model),
        macs=count_macs(model, config.resolution),
        checkpoint_mb=checkpoint_size_mb(model),
        train_images_per_s=_median(trials.train_images_per_s),
        peak_train_memory_mb=_median(trials.peak_train_memory_mb),
        peak_prewarm_memory_mb=_median(trials.peak_prewarm_memory_mb),
        # The budget's choice depends on the model and the batch only, so it is one per model.
        prewarm_chunk_size=trials.prewarm_chunk_size[0] if trials.prewarm_chunk_size else None,
        infer_latency_ms=statistics.median(trials.infer_latency_ms),
        infer_images_per_s=statistics.median(trials.infer_images_per_s),
        resolution=config.resolution,
        batch_size=config.batch_size,
        phases=config.phases,
        prewarm_batch_size=config.prewarm_batch_size if prewarm else None,
        max_memory_mb=config.max_memory_mb,
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
