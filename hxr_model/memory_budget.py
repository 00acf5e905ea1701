"""Pick the largest batch size whose training step fits a memory budget (`--max-memory-mb`).

Training memory is parameters + gradients + optimiser state (fixed) plus the activations autograd
keeps for the backward pass (linear in batch size). Activations are counted exactly with
`saved_tensors_hooks` on probe forwards of batch 1 and 2, which works the same on CPU and CUDA and
needs no trial-and-error runs that could themselves exceed the budget.
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
    one = _saved_activation_bytes(forward, 1, skip)
    two = _saved_activation_bytes(forward, 2, skip)
    per_image = max(two - one, 1)
    fixed = PARAMETER_COPIES * parameter_bytes + max(one - per_image, 0)
    return MemoryEstimate(fixed_mb=fixed / MEGABYTE, per_image_mb=per_image / MEGABYTE)


def batch_size_for_budget(
    model: nn.Module, forward: Callable[[int], torch.Tensor], budget_mb: float, upper_limit: int
) -> int:
    """Largest batch size (at most `upper_limit`) whose estimated peak fits `budget_mb`."""
    estimate = estimate_training_memory(model, forward)
    batch_size = estimate.largest_batch(budget_mb, upper_limit)
    if batch_size < 1:
        raise ConfigError(
            f"a memory budget of {budget_mb:.0f} MB is too small: this model needs about "
            f"{estimate.peak_mb(1):.0f} MB to train on a single image"
        )
    return batch_size
