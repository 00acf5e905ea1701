"""Teacher-free pre-warming: SimCLR on a site's own radiographs, labels not needed.

Two augmented views of every radiograph go through the classifier's encoder and a small
projection head; the NT-Xent loss pulls the two views of one image together and pushes the other
images of the batch away. The encoder that comes out initialises supervised fine-tuning; the
projection head is thrown away (or, in federation, aggregated alongside the encoder).

Contrastive learning wants a large batch, and the batch's activations are what fills memory (two
views of 256 images at 224 px: about 4 GB). Under a memory budget the batch stays as configured
and goes through the network in chunks, gradient-cache style (`contrastive_step`), so the loss
still compares every image with all the others while only one chunk's activations are held.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from hxr_model.augment import SIMCLR, augment_batch
from hxr_model.memory_budget import MEGABYTE, contrastive_chunk_for_budget
from hxr_model.models import RadiographClassifier
from hxr_model.runtime import autocast_context, resolve_device, seed_everything
from hxr_model.training_loop import (
    Backward,
    EpochEnd,
    LoopConfig,
    make_loader,
    run_steps,
)

# The weights pre-warming trains (the input normalisation is fixed configuration, not state).
ENCODER_PREFIX = "encoder."
# The loss over the whole batch keeps its 2B x 2B similarities, their log-softmax and the
# gradients of both: four float32 copies, held while the chunks train.
SIMILARITY_COPIES = 4
FLOAT_BYTES = 4


class PrewarmConfig(LoopConfig):
    """SimCLR settings. Contrastive learning wants large batches and a low temperature.

    `max_memory_mb` bounds the memory without shrinking the batch: it chooses how many image
    pairs go through the network at once.
    """

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


class ProjectedFeatures(nn.Module):
    """What the contrastive loss sees of an image: the classifier's pooled features, projected."""

    def __init__(self, classifier: RadiographClassifier, projection: ProjectionHead) -> None:
        super().__init__()
        self.classifier = classifier
        self.projection = projection

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.projection(self.classifier.features(views))


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


def both_views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """View a of every image, then view b of every image: one batch for the network."""
    return torch.cat([augment_batch(images, SIMCLR, generator) for _ in range(2)])


def chunked_nt_xent(projections: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """NT-Xent over the whole batch from its chunks' projections (each is `both_views` order)."""
    halves = [chunk.chunk(2) for chunk in projections]
    view_a = torch.cat([a for a, _ in halves])
    view_b = torch.cat([b for _, b in halves])
    return nt_xent_loss(view_a, view_b, temperature)


@contextmanager
def leaves_no_trace(
    network: nn.Module, device: torch.device, generator: torch.Generator | None = None
) -> Iterator[None]:
    """Run a block as if it had not run: the network's buffers (BatchNorm running statistics),
    the global random state on `device` (dropout, stochastic depth) and the augmentation
    `generator` are put back as they were, so what the block did can be replayed exactly."""
    buffers = list(network.buffers())
    saved = [buffer.clone() for buffer in buffers]
    augmentation = None if generator is None else generator.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    if generator is not None and augmentation is not None:
        generator.set_state(augmentation)
    with torch.no_grad():
        for buffer, value in zip(buffers, saved, strict=True):
            buffer.copy_(value)


def contrastive_step(
    network: nn.Module,
    images: torch.Tensor,
    chunk_pairs: int,
    generator: torch.Generator,
    temperature: float,
    backward: Backward,
) -> torch.Tensor:
    """The gradients of one SimCLR batch, at most `chunk_pairs` image pairs in `network` at once;
    returns the loss.

    Chunks: the batch is cut into ceil(B / chunk_pairs) chunks of near-equal size, and a chunk
    holds both views of its images (`both_views`), so BatchNorm normalises the two views of an
    image with the same statistics, as the single pass over the whole batch (one chunk) does.
    The objective is NT-Xent over the whole batch of the chunks' projections (`chunked_nt_xent`).

    With more than one chunk the gradient is cached: every chunk's projections are computed
    without autograd, in a pass that `leaves_no_trace`; the loss and its gradient with respect
    to those projections come next; then each chunk is run again, this time with autograd, on the
    same views (the augmentation generator and the global random state are replayed) and its
    projections are back-propagated with their share of that gradient. BatchNorm statistics are
    updated by the second pass only, once per chunk, so parameters, gradients and running
    statistics come out as from back-propagating the chunked objective directly.
    """
    device = images.device
    chunks = images.tensor_split(math.ceil(len(images) / chunk_pairs))
    if len(chunks) == 1:
        with autocast_context(device):
            loss = chunked_nt_xent([network(both_views(images, generator))], temperature)
        backward(loss)
        return loss
    with torch.no_grad(), leaves_no_trace(network, device, generator), autocast_context(device):
        cached = [network(both_views(chunk, generator)).requires_grad_() for chunk in chunks]
    loss = chunked_nt_xent(cached, temperature)
    backward(loss)
    for chunk, projections in zip(chunks, cached, strict=True):
        with autocast_context(device):
            rerun = network(both_views(chunk, generator))
        rerun.backward(projections.grad)
    return loss


def chunk_pairs_for_budget(
    network: ProjectedFeatures,
    config: PrewarmConfig,
    pairs: int,
    image_size: int,
    device: torch.device,
) -> int:
    """All `pairs` of a batch at once without a budget; with `config.max_memory_mb`, the most
    pairs whose forward and backward fit beside the batch and the loss over all of it."""
    if config.max_memory_mb is None:
        return pairs

    def probe(views: int) -> torch.Tensor:
        with autocast_context(device):
            return network(torch.rand(views, 1, image_size, image_size, device=device)).sum()

    held_bytes = FLOAT_BYTES * (
        pairs * image_size * image_size + SIMILARITY_COPIES * (2 * pairs) ** 2
    )
    trained = nn.ModuleList([network.classifier.encoder, network.projection])
    # The probes must not move BatchNorm statistics or random streams pre-warming will use.
    with leaves_no_trace(network, device):
        return contrastive_chunk_for_budget(
            trained, probe, config.max_memory_mb, pairs, held_bytes / MEGABYTE
        )


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
    batch_size: int  # image pairs compared in one loss
    chunk_size: int  # image pairs in the network at once


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
    network = ProjectedFeatures(classifier, projection).to(device).train()
    trainable = list(classifier.encoder.parameters()) + list(projection.parameters())
    batch_size = min(config.batch_size, len(dataset))
    image_size = int(dataset[0][0].shape[-1])
    chunk_pairs = chunk_pairs_for_budget(network, config, batch_size, image_size, device)

    def batch_step(images: torch.Tensor, _labels: torch.Tensor, backward: Backward) -> torch.Tensor:
        return contrastive_step(
            network, images, chunk_pairs, generator, config.temperature, backward
        )

    def end_of_epoch(epoch: int, loss: float) -> EpochEnd:
        return EpochEnd(f"pre-warm epoch {epoch}/{config.epochs}  nt-xent {loss:.4f}")

    loader = make_loader(dataset, batch_size, generator, config.num_workers)
    outcome = run_steps(
        config, trainable, loader, device, batch_step, end_of_epoch, name="pre-warm"
    )
    return PrewarmResult(
        losses=outcome.epoch_losses,
        projection=projection,
        peak_memory_mb=outcome.peak_memory_mb,
        seconds=outcome.seconds,
        images_per_s=outcome.images_per_s,
        examples=len(dataset),
        batch_size=batch_size,
        chunk_size=chunk_pairs,
    )
