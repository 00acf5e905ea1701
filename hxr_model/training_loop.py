"""The gradient-descent loop that SimCLR pre-warming and supervised fine-tuning share.

Both phases batch a dataset, fit the batch to a memory budget, step an optimiser on a per-step
schedule with mixed precision on CUDA, show a progress bar per epoch and measure peak memory and
throughput. Only the loss of a batch (or, for a phase that computes its gradients in pieces, the
whole gradient step) and what happens after an epoch differ, so those are what a caller passes
in; the rest lives here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from hxr_model.memory_budget import batch_size_for_budget
from hxr_model.metrics import PeakMemoryMeter
from hxr_model.runtime import (
    OptimizerName,
    ScheduleName,
    make_optimizer,
    make_scheduler,
    needs_grad_scaler,
)


class LoopConfig(BaseModel):
    """Settings of every training phase; each phase's config adds its own and its defaults."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1, le=4096)
    learning_rate: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: OptimizerName = "adamw"
    schedule: ScheduleName = "cosine"
    seed: int = 0
    device: str = "auto"
    max_memory_mb: float | None = Field(None, gt=0)
    progress: bool = True
    num_workers: int = Field(0, ge=0)


class EpochEnd(NamedTuple):
    """What a phase says after an epoch: the progress line, and whether to stop here."""

    line: str
    stop: bool = False


BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Back-propagates a loss, scaled for mixed precision when the device needs it.
Backward = Callable[[torch.Tensor], None]
# Computes a batch's gradients itself, calling `backward` on the loss it descends (and leaving
# any further backward passes it needs scaled alike), and returns that loss.
BatchStep = Callable[[torch.Tensor, torch.Tensor, Backward], torch.Tensor]
EndOfEpoch = Callable[[int, float], EpochEnd]


@dataclass
class LoopOutcome:
    """What the loop measured; the phase adds its own results (validation, projection head)."""

    epoch_losses: list[float]  # mean batch loss of each epoch run
    peak_memory_mb: float
    seconds: float  # the whole loop, epoch ends (validation) included
    images_per_s: float  # over the batch loops only


def make_loader(
    dataset: Dataset,
    batch_size: int,
    generator: torch.Generator,
    num_workers: int = 0,
    sample_weights: np.ndarray | None = None,
) -> DataLoader:
    """Shuffled (or class-balanced) batches; the last partial batch is dropped when it could be a
    single image, which BatchNorm cannot train on."""
    size = len(dataset)
    sampler = None
    if sample_weights is not None:
        sampler = WeightedRandomSampler(
            torch.as_tensor(sample_weights, dtype=torch.double), size, generator=generator
        )
    return DataLoader(
        dataset,
        batch_size=min(batch_size, size),
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=size % min(batch_size, size) == 1,
        num_workers=num_workers,
    )


def budget_batch_size(
    model: nn.Module,
    config: LoopConfig,
    image_size: int,
    device: torch.device,
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> int:
    """`config.batch_size`, or with `config.max_memory_mb` the largest batch (up to it) whose
    training step fits; `forward` runs the phase's forward pass, up to the loss, on images."""
    if config.max_memory_mb is None:
        return config.batch_size

    def probe(batch: int) -> torch.Tensor:
        return forward(torch.rand(batch, 1, image_size, image_size, device=device))

    return batch_size_for_budget(model, probe, config.max_memory_mb, config.batch_size)


def run_epochs(
    config: LoopConfig,
    parameters: Sequence[nn.Parameter],
    loader: DataLoader,
    device: torch.device,
    batch_loss: BatchLoss,
    end_of_epoch: EndOfEpoch,
    name: str,
) -> LoopOutcome:
    """Train `parameters` for `config.epochs` epochs of `loader`.

    `batch_loss(images, labels)` (both on `device`) returns the loss to descend, computed under
    the caller's autocast; `end_of_epoch(epoch, mean_loss)` runs after each epoch (validation,
    bookkeeping) and may stop the run early. `name` labels the progress bar.
    """

    def batch_step(images: torch.Tensor, labels: torch.Tensor, backward: Backward) -> torch.Tensor:
        loss = batch_loss(images, labels)
        backward(loss)
        return loss

    return run_steps(config, parameters, loader, device, batch_step, end_of_epoch, name)


def run_steps(
    config: LoopConfig,
    parameters: Sequence[nn.Parameter],
    loader: DataLoader,
    device: torch.device,
    batch_step: BatchStep,
    end_of_epoch: EndOfEpoch,
    name: str,
) -> LoopOutcome:
    """`run_epochs` for a phase whose `batch_step(images, labels, backward)` computes the
    gradients of a batch itself (pre-warming does it chunk by chunk to bound its memory)."""
    optimizer = make_optimizer(
        list(parameters), config.optimizer, config.learning_rate, config.weight_decay
    )
    scheduler = make_scheduler(
        optimizer, config.schedule, config.learning_rate, config.epochs * len(loader)
    )
    scaler = torch.amp.GradScaler(enabled=needs_grad_scaler(device))
    epoch_losses: list[float] = []
    batch_seconds, images_seen = 0.0, 0

    def backward(loss: torch.Tensor) -> None:
        scaler.scale(loss).backward()

    started = time.perf_counter()
    with PeakMemoryMeter(device) as memory:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            losses = []
            bar = tqdm(
                loader,
                desc=f"{name} {epoch}/{config.epochs}",
                leave=False,
                disable=not config.progress,
            )
            for images, labels in bar:
                images, labels = images.to(device), labels.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = batch_step(images, labels, backward)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                losses.append(loss.item())
                images_seen += len(images)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            batch_seconds += time.perf_counter() - epoch_start
            epoch_losses.append(float(np.mean(losses)))
            ending = end_of_epoch(epoch, epoch_losses[-1])
            if config.progress:
                tqdm.write(ending.line)
            if ending.stop:
                break
    return LoopOutcome(
        epoch_losses=epoch_losses,
        peak_memory_mb=memory.peak_mb,
        seconds=time.perf_counter() - started,
        images_per_s=images_seen / batch_seconds if batch_seconds > 0 else 0.0,
    )
