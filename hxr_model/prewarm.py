"""Teacher-free pre-warming: SimCLR on a site's own radiographs, labels not needed.

Two augmented views of every radiograph go through the classifier's encoder and a small
projection head; the NT-Xent loss pulls the two views of one image together and pushes the other
images of the batch away. The encoder that comes out initialises supervised fine-tuning; the
projection head is thrown away (or, in federation, aggregated alongside the encoder).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from hxr_model.augment import SIMCLR, augment_batch
from hxr_model.memory_budget import batch_size_for_budget
from hxr_model.metrics import PeakMemoryMeter
from hxr_model.models import RadiographClassifier
from hxr_model.runtime import (
    OptimizerName,
    ScheduleName,
    autocast_context,
    make_optimizer,
    make_scheduler,
    needs_grad_scaler,
    resolve_device,
    seed_everything,
)
from hxr_model.training import make_loader

# The weights pre-warming trains (the input normalisation is fixed configuration, not state).
ENCODER_PREFIX = "encoder."


class PrewarmConfig(BaseModel):
    """SimCLR settings. Contrastive learning wants large batches and a low temperature."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(5, ge=0)
    batch_size: int = Field(128, ge=2, le=4096)
    learning_rate: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: OptimizerName = "adamw"
    schedule: ScheduleName = "cosine"
    temperature: float = Field(0.2, gt=0, le=10)
    projection_dim: int = Field(64, ge=2)
    seed: int = 0
    device: str = "auto"
    max_memory_mb: float | None = Field(None, gt=0)
    progress: bool = True
    num_workers: int = Field(0, ge=0)


class ProjectionHead(nn.Module):
    """The SimCLR MLP: the contrastive loss acts on its output, not on the encoder features."""

    def __init__(self, feature_dim: int, projection_dim: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, projection_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def nt_xent_loss(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy over the 2B projections of B image pairs.

    Row i's positive is its other view; the 2B - 2 other projections are its negatives.
    """
    if view_a.shape != view_b.shape or view_a.ndim != 2:
        raise ValueError(f"views must both be B x D, got {view_a.shape} and {view_b.shape}")
    batch = view_a.shape[0]
    projections = F.normalize(torch.cat([view_a, view_b]).float(), dim=1)
    similarity = projections @ projections.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
    return F.cross_entropy(similarity, positives.to(similarity.device))


def encoder_state(classifier: RadiographClassifier) -> dict[str, torch.Tensor]:
    """The part of a classifier's weights that pre-warming trains."""
    return {
        name: tensor
        for name, tensor in classifier.state_dict().items()
        if name.startswith(ENCODER_PREFIX)
    }


@dataclass
class PrewarmResult:
    losses: list[float]
    projection: ProjectionHead
    peak_memory_mb: float
    seconds: float
    images_per_s: float
    examples: int
    batch_size: int


def prewarm_encoder(
    classifier: RadiographClassifier,
    dataset: Dataset,
    config: PrewarmConfig,
    projection: ProjectionHead | None = None,
) -> PrewarmResult:
    """Train `classifier.encoder` in place with SimCLR; labels in `dataset` are ignored."""
    if len(dataset) < 2:
        raise ValueError(f"pre-warming needs at least 2 images, got {len(dataset)}")
    device = resolve_device(config.device)
    generator = seed_everything(config.seed)
    if projection is None:
        projection = ProjectionHead(classifier.feature_dim, config.projection_dim)
    classifier.to(device).train()
    projection.to(device).train()
    trainable = list(classifier.encoder.parameters()) + list(projection.parameters())

    def loss_of(views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
        both = projection(classifier.features(torch.cat([views_a, views_b])))
        return nt_xent_loss(*both.chunk(2), config.temperature)

    batch_size = config.batch_size
    if config.max_memory_mb is not None:
        image_size = int(dataset[0][0].shape[-1])

        def probe(batch: int) -> torch.Tensor:
            images = torch.rand(max(batch, 2), 1, image_size, image_size, device=device)
            return loss_of(images, images)

        batch_size = max(
            2, batch_size_for_budget(classifier, probe, config.max_memory_mb, config.batch_size)
        )
    loader = make_loader(dataset, batch_size, generator, config.num_workers)
    optimizer = make_optimizer(
        trainable, config.optimizer, config.learning_rate, config.weight_decay
    )
    scheduler = make_scheduler(
        optimizer, config.schedule, config.learning_rate, config.epochs * len(loader)
    )
    scaler = torch.amp.GradScaler(enabled=needs_grad_scaler(device))
    losses: list[float] = []
    images_seen = 0
    started = time.perf_counter()
    with PeakMemoryMeter(device) as memory:
        for epoch in range(1, config.epochs + 1):
            batch_losses = []
            bar = tqdm(
                loader,
                desc=f"pre-warm {epoch}/{config.epochs}",
                leave=False,
                disable=not config.progress,
            )
            for images, _ in bar:
                if len(images) < 2:
                    continue
                images = images.to(device)
                views_a = augment_batch(images, SIMCLR, generator)
                views_b = augment_batch(images, SIMCLR, generator)
                with autocast_context(device):
                    loss = loss_of(views_a, views_b)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                batch_losses.append(loss.item())
                images_seen += len(images)
                bar.set_postfix(loss=f"{batch_losses[-1]:.3f}")
            losses.append(float(np.mean(batch_losses)))
            if config.progress:
                tqdm.write(f"pre-warm epoch {epoch}/{config.epochs}  nt-xent {losses[-1]:.4f}")
    seconds = time.perf_counter() - started
    return PrewarmResult(
        losses=losses,
        projection=projection,
        peak_memory_mb=memory.peak_mb,
        seconds=seconds,
        images_per_s=images_seen / seconds if seconds > 0 else 0.0,
        examples=len(dataset),
        batch_size=batch_size,
    )
