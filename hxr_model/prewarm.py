"""Teacher-free pre-warming: SimCLR on a site's own radiographs, labels not needed.

Two augmented views of every radiograph go through the classifier's encoder and a small
projection head; the NT-Xent loss pulls the two views of one image together and pushes the other
images of the batch away. The encoder that comes out initialises supervised fine-tuning; the
projection head is thrown away (or, in federation, aggregated alongside the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from hxr_model.augment import SIMCLR, augment_batch
from hxr_model.models import RadiographClassifier
from hxr_model.runtime import autocast_context, resolve_device, seed_everything
from hxr_model.training_loop import (
    EpochEnd,
    LoopConfig,
    budget_batch_size,
    make_loader,
    run_epochs,
)

# The weights pre-warming trains (the input normalisation is fixed configuration, not state).
ENCODER_PREFIX = "encoder."


class PrewarmConfig(LoopConfig):
    """SimCLR settings. Contrastive learning wants large batches and a low temperature."""

    epochs: int = Field(5, ge=0)
    # Every image needs another in its batch to be told apart from.
    batch_size: int = Field(128, ge=2, le=4096)
    temperature: float = Field(0.2, gt=0, le=10)
    projection_dim: int = Field(64, ge=2)


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

    def batch_loss(images: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        views_a = augment_batch(images, SIMCLR, generator)
        views_b = augment_batch(images, SIMCLR, generator)
        with autocast_context(device):
            return loss_of(views_a, views_b)

    def end_of_epoch(epoch: int, loss: float) -> EpochEnd:
        return EpochEnd(f"pre-warm epoch {epoch}/{config.epochs}  nt-xent {loss:.4f}")

    image_size = int(dataset[0][0].shape[-1])
    batch_size = budget_batch_size(
        classifier, config, image_size, device, lambda images: loss_of(images, images)
    )
    loader = make_loader(dataset, batch_size, generator, config.num_workers)
    outcome = run_epochs(
        config, trainable, loader, device, batch_loss, end_of_epoch, name="pre-warm"
    )
    return PrewarmResult(
        losses=outcome.epoch_losses,
        projection=projection,
        peak_memory_mb=outcome.peak_memory_mb,
        seconds=outcome.seconds,
        images_per_s=outcome.images_per_s,
        examples=len(dataset),
        batch_size=batch_size,
    )
