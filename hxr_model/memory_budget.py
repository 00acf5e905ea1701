"""Pick the largest batch size whose training step fits a memory budget (`--max-memory-mb`).

Training memory is parameters + gradients + optimiser state (fixed) plus the activations autograd
keeps for the backward pass (linear in batch size). Activations are counted exactly with
`saved_tensors_hooks` on probe forwards of batch 2 and 3 (BatchNorm refuses a batch of one once
a stage's map is 1 x 1, as at 28 px), which works the same on CPU and CUDA and needs no
trial-and-error runs that could themselves exceed the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hxr_model.errors import ConfigError

# AdamW keeps two moments: weights + gradients + 2 states = 4 copies of every parameter.
PARAMETER_COPIES = 4
# Activation gradients, allocator growth and workspaces on top of the saved activations. Measured
# on CPU (hxr100, 96 px, first AdamW step from a cold process): RSS peaks at up to 1.65x the
# saved-activation estimate at batch 64; 2.0 keeps the chosen batch inside the budget.
SAFETY_FACTOR = 2.0
MEGABYTE = 1024 * 1024
MIN_BATCH = 2


@dataclass(frozen=True)
class MemoryEstimate:
    fixed_mb: float
    per_image_mb: float

    def peak_mb(self, batch_size: int) -> float:
        return self.fixed_mb + SAFETY_FACTOR * self.per_image_mb * batch_size

    def largest_batch(self, budget_mb: float, upper_limit: int) -> int:
        room = budget_mb - self.fixed_mb
        if room <= 0 or self.per_image_mb <= 0:
            return 0
        return min(upper_limit, int(room / (SAFETY_FACTOR * self.per_image_mb)))


def _saved_activation_bytes(forward: Callable[[int], torch.Tensor], batch_size: int, skip) -> int:
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward(batch_size)
    return sum(seen.values())


def estimate_training_memory(
    model: nn.Module, forward: Callable[[int], torch.Tensor]
) -> MemoryEstimate:
    """`forward(b)` runs the training forward pass (up to the loss) on a batch of `b` images."""
    parameters = list(model.parameters())
    parameter_bytes = sum(p.numel() * p.element_size() for p in parameters)
    skip = {p.untyped_storage().data_ptr() for p in parameters}
    two = _saved_activation_bytes(forward, 2, skip)
    three = _saved_activation_bytes(forward, 3, skip)
    per_image = max(three - two, 1)
    fixed = PARAMETER_COPIES * parameter_bytes + max(two - 2 * per_image, 0)
    return MemoryEstimate(fixed_mb=fixed / MEGABYTE, per_image_mb=per_image / MEGABYTE)


def batch_size_for_budget(
    model: nn.Module, forward: Callable[[int], torch.Tensor], budget_mb: float, upper_limit: int
) -> int:
    """Largest batch size (at most `upper_limit`) whose estimated peak fits `budget_mb`."""
    estimate = estimate_training_memory(model, forward)
    batch_size = estimate.largest_batch(budget_mb, upper_limit)
    if batch_size < MIN_BATCH:
        raise ConfigError(
            f"a memory budget of {budget_mb:.0f} MB is too small: this model needs about "
            f"{estimate.peak_mb(MIN_BATCH):.0f} MB to train on a batch of {MIN_BATCH} images "
            "(BatchNorm needs at least two)"
        )
    return batch_size
