"""Static cost of a model: parameters, multiply-accumulates, checkpoint size and a stage table.

These are the numbers `hxr info` prints (with the stage Grad-CAM reads at that resolution) and
`hxr bench` reports beside its measurements. MACs count the multiply-accumulates of every Conv2d
and Linear layer for one image (the convention of the papers we compare with); normalisation,
activations, pooling and additions are not counted.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from hxr_model.errors import ConfigError
from hxr_model.gradcam import GradcamLayer, gradcam_layer
from hxr_model.models import RadiographClassifier, build_model, check_model_name
from hxr_model.text_table import format_table

BYTES_PER_MB = 1024**2
# Input sides every registered model accepts (square, single channel).
MIN_RESOLUTION = 28
MAX_RESOLUTION = 512

HookRecorder = Callable[[str, nn.Module, torch.Tensor], None]


@dataclass(frozen=True)
class StageRow:
    """One row of a stage table: a top-level piece of the network and what it costs."""

    name: str
    layers: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelProfile:
    name: str
    resolution: int
    params: int
    macs: int
    checkpoint_mb: float
    stages: list[StageRow]
    gradcam: GradcamLayer


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_macs(model: nn.Module, resolution: int) -> dict[str, int]:
    """MACs of each Conv2d and Linear layer (by qualified name) for one 1 x R x R image."""
    macs: dict[str, int] = {}

    def record(name: str, module: nn.Module, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            per_output = (module.in_channels // module.groups) * kernel_h * kernel_w
        else:
            per_output = module.in_features
        macs[name] = macs.get(name, 0) + output.numel() * per_output

    counted = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }
    with _forward_hooks(counted, record):
        _probe(model, resolution)
    return macs


def count_macs(model: nn.Module, resolution: int) -> int:
    return sum(layer_macs(model, resolution).values())


def checkpoint_size_mb(model: nn.Module) -> float:
    """Size of the serialised weights (`torch.save` of the state dict), what a site downloads."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / BYTES_PER_MB


def stage_modules(model: RadiographClassifier) -> dict[str, nn.Module]:
    """The network's top-level pieces, in order: encoder parts with the Grad-CAM stages split
    into their children (for HybridNet-XR the stem, each residual stage and the pooling;
    for torchvision baselines each feature block), then the head."""
    container = model.gradcam_layer
    prefix = container.rsplit(".", 1)[0]
    parent = model.get_submodule(prefix)
    modules: dict[str, nn.Module] = {}
    for child_name, child in parent.named_children():
        qualified = f"{prefix}.{child_name}"
        if qualified == container:
            for grandchild_name, grandchild in child.named_children():
                modules[f"{qualified}.{grandchild_name}"] = grandchild
        else:
            modules[qualified] = child
    modules["head"] = model.head
    return modules


def stage_table(model: RadiographClassifier, resolution: int) -> list[StageRow]:
    modules = stage_modules(model)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: nn.Module, output: torch.Tensor) -> None:
        shapes[name] = tuple(output.shape[1:])

    with _forward_hooks(modules, record):
        macs = layer_macs(model, resolution)
    return [
        StageRow(
            name=name,
            layers=_describe(module),
            output_shape=shapes[name],
            params=count_parameters(module),
            macs=sum(
                value
                for layer, value in macs.items()
                if layer == name or layer.startswith(f"{name}.")
            ),
        )
        for name, module in modules.items()
    ]


def check_resolution(resolution: int) -> None:
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ConfigError(
            f"resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} px, got {resolution}"
        )


def profile_model(name: str, resolution: int, num_classes: int = 2) -> ModelProfile:
    check_model_name(name)
    check_resolution(resolution)
    model = build_model(name, num_classes)
    return ModelProfile(
        name=name,
        resolution=resolution,
        params=count_parameters(model),
        macs=count_macs(model, resolution),
        checkpoint_mb=checkpoint_size_mb(model),
        stages=stage_table(model, resolution),
        gradcam=gradcam_layer(model, resolution),
    )


def format_profile(profile: ModelProfile) -> str:
    """Human-readable `hxr info` output: totals, then the stage table."""
    header = ("stage", "layers", "output", "params", "MACs")
    rows = [
        (
            row.name,
            row.layers,
            " x ".join(str(size) for size in row.output_shape),
            f"{row.params:,}",
            f"{row.macs / 1e6:.2f}M",
        )
        for row in profile.stages
    ]
    summary = [
        f"model: {profile.name}",
        f"resolution: {profile.resolution} x {profile.resolution} (1 channel)",
        f"parameters: {profile.params:,}",
        f"MACs: {profile.macs / 1e6:.2f}M per image",
        f"checkpoint: {profile.checkpoint_mb:.2f} MB",
        f"Grad-CAM: {profile.gradcam.name} ({' x '.join(map(str, profile.gradcam.cells))} cells)",
        "",
    ]
    return "\n".join([*summary, format_table(header, rows, align="lllll")])


def _describe(module: nn.Module) -> str:
    """'3 x SeparableResidualBlock' for a plain stack of equal blocks, 'Dropout + Linear' for a
    plain mixed stack, else the module's class name."""
    if type(module) is not nn.Sequential:
        return type(module).__name__
    children = list(module.children())
    if len(children) == 1:
        return _describe(children[0])
    kinds = [type(child).__name__ for child in children]
    if len(set(kinds)) == 1:
        return f"{len(kinds)} x {kinds[0]}"
    return " + ".join(kinds)


def _probe(model: nn.Module, resolution: int) -> None:
    """One batch-1 forward pass in eval mode, leaving the model's mode as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, resolution, resolution))
    finally:
        model.train(was_training)


@contextmanager
def _forward_hooks(modules: dict[str, nn.Module], record: HookRecorder) -> Iterator[None]:
    handles = [
        module.register_forward_hook(
            lambda mod, _inputs, output, name=name: record(name, mod, output)
        )
        for name, module in modules.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
