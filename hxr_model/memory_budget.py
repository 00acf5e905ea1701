"""Fit training to a memory budget (`--max-memory-mb`): the largest batch size whose training step
fits, or, where the batch itself is fixed (a contrastive batch), the largest chunk of it that
can go through forward and backward at once.

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
# Pre-warming one chunk after another: measured on CPU (HXR-150, 224 px, chunks of 4-16 pairs of
# a 128-pair batch, fresh process) the resident set grows by 2.45x the saved-activation estimate
# per pair, because every chunk frees and reallocates its activations below the size glibc hands
# back to the system; 3.0 keeps the peak inside the budget.
CHUNK_SAFETY_FACTOR = 3.0
MEGABYTE = 1024 * 1024
MIN_BATCH = 2


@dataclass(frozen=True)
class MemoryEstimate:
    fixed_mb: float
    per_image_mb: float
    safety_factor: float = SAFETY_FACTOR

    def peak_mb(self, batch_size: int) -> float:
        return self.fixed_mb + self.safety_factor * self.per_image_mb * batch_size

    def largest_batch(self, budget_mb: float, upper_limit: int) -> int:
        room = budget_mb - self.fixed_mb
        if room <= 0 or self.per_image_mb <= 0:
            return 0
        return min(upper_limit, int(room / (self.safety_factor * self.per_image_mb)))


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


def contrastive_chunk_for_budget(
    model: nn.Module,
    forward: Callable[[int], torch.Tensor],
    budget_mb: float,
    pairs: int,
    held_mb: float,
) -> int:
    """Largest number of image pairs (at most `pairs`) whose two views can train at once under
    `budget_mb`, while `held_mb` stays allocated throughout (the whole batch, the loss over it).

    `forward(b)` runs the training forward pass on `b` single views; a pair is two of them.
    """
    per_view = estimate_training_memory(model, forward)
    chunk = MemoryEstimate(
        fixed_mb=per_view.fixed_mb + held_mb,
        per_image_mb=2 * per_view.per_image_mb,
        safety_factor=CHUNK_SAFETY_FACTOR,
    )
    size = chunk.largest_batch(budget_mb, pairs)
    if size < 1:
        raise ConfigError(
            f"a memory budget of {budget_mb:.0f} MB is too small: pre-warming this model on a "
            f"batch of {pairs} image pairs needs about {chunk.peak_mb(1):.0f} MB even one pair "
            "at a time"
        )
    return size
