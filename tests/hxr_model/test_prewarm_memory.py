"""Pre-warming under a memory budget: the gradient-cached chunks must train exactly like the
chunked objective computed directly, and the chunk must come from the budget."""

import copy

import pytest
import torch
from torch import nn

from hxr_model.augment import SIMCLR, augment_batch
from hxr_model.errors import ConfigError
from hxr_model.memory_budget import CHUNK_SAFETY_FACTOR, estimate_training_memory
from hxr_model.metrics import PeakMemoryMeter
from hxr_model.models import build_model
from hxr_model.prewarm import (
    FLOAT_BYTES,
    SIMILARITY_COPIES,
    PrewarmConfig,
    ProjectedFeatures,
    ProjectionHead,
    chunk_pairs_for_budget,
    contrastive_step,
    nt_xent_loss,
    prewarm_encoder,
)

QUIET = {"device": "cpu", "progress": False}
TEMPERATURE = 0.5


def backward(loss: torch.Tensor) -> None:
    loss.backward()


def tiny_network() -> nn.Module:
    """BatchNorm in the encoder and the head (chunk statistics), dropout (random state)."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(6, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 4),
    ).train()


def direct_chunked_objective(
    network: nn.Module, images: torch.Tensor, chunks: int, generator: torch.Generator
) -> torch.Tensor:
    """The reference: every chunk (both views of its images) through the network with autograd,
    NT-Xent over the whole batch of projections."""
    views_a, views_b = [], []
    for chunk in images.tensor_split(chunks):
        both = torch.cat([augment_batch(chunk, SIMCLR, generator) for _ in range(2)])
        projection_a, projection_b = network(both).chunk(2)
        views_a.append(projection_a)
        views_b.append(projection_b)
    return nt_xent_loss(torch.cat(views_a), torch.cat(views_b), TEMPERATURE)


@pytest.mark.parametrize("chunk_pairs, chunks", [(3, 4), (5, 2)])
def test_cached_gradients_equal_the_chunked_objective_computed_directly(
    chunk_pairs: int, chunks: int
) -> None:
    images = torch.rand(10, 1, 12, 12)
    cached_net, direct_net = tiny_network(), tiny_network()
    before = copy.deepcopy(direct_net.state_dict())
    cached_gen, direct_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)

    torch.manual_seed(11)
    cached_loss = contrastive_step(
        cached_net, images, chunk_pairs, cached_gen, TEMPERATURE, backward
    )
    cached_rng = torch.get_rng_state()
    torch.manual_seed(11)
    direct_loss = direct_chunked_objective(direct_net, images, chunks, direct_gen)
    direct_loss.backward()

    assert cached_loss.item() == pytest.approx(direct_loss.item(), abs=1e-6)
    for (name, cached), direct in zip(
        cached_net.named_parameters(), direct_net.parameters(), strict=True
    ):
        assert direct.grad is not None and direct.grad.abs().sum() > 0, name
        torch.testing.assert_close(cached.grad, direct.grad, rtol=0, atol=1e-5, msg=name)
    # Running statistics: updated once per chunk, by exactly what one pass computes.
    for name, value in direct_net.state_dict().items():
        torch.testing.assert_close(cached_net.state_dict()[name], value, rtol=0, atol=1e-7)
        if name.endswith("num_batches_tracked"):
            assert value.item() == chunks
        elif "running" in name:
            assert not torch.equal(value, before[name])
    # The augmentation stream and the global random state end where one pass leaves them.
    assert torch.equal(cached_gen.get_state(), direct_gen.get_state())
    assert torch.equal(cached_rng, torch.get_rng_state())


def test_one_chunk_is_the_plain_single_pass() -> None:
    """Without a budget the whole batch goes through at once, as before chunking existed."""
    images = torch.rand(6, 1, 12, 12)
    network, reference = tiny_network(), tiny_network()
    torch.manual_seed(0)
    loss = contrastive_step(
        network, images, 6, torch.Generator().manual_seed(1), TEMPERATURE, backward
    )
    torch.manual_seed(0)
    expected = direct_chunked_objective(reference, images, 1, torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert network[1].num_batches_tracked.item() == 1


def test_the_chunk_is_the_largest_that_fits_the_budget_and_the_batch_stays() -> None:
    classifier = build_model("hxr50", 2)
    network = ProjectedFeatures(classifier, ProjectionHead(classifier.feature_dim)).train()
    state = copy.deepcopy(network.state_dict())

    def probe(views: int) -> torch.Tensor:
        return network(torch.rand(views, 1, 64, 64)).sum()

    per_view = estimate_training_memory(
        nn.ModuleList([classifier.encoder, network.projection]), probe
    )
    network.load_state_dict(state)
    pairs = 48
    held_mb = FLOAT_BYTES * (pairs * 64 * 64 + SIMILARITY_COPIES * (2 * pairs) ** 2) / 2**20
    pair_mb = CHUNK_SAFETY_FACTOR * 2 * per_view.per_image_mb
    budget = per_view.fixed_mb + held_mb + 7.5 * pair_mb
    config = PrewarmConfig(batch_size=pairs, max_memory_mb=budget, **QUIET)
    assert chunk_pairs_for_budget(network, config, pairs, 64, torch.device("cpu")) == 7
    # Choosing the chunk leaves the BatchNorm statistics alone.
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in state.items())
    unbounded = PrewarmConfig(batch_size=pairs, **QUIET)
    assert chunk_pairs_for_budget(network, unbounded, pairs, 64, torch.device("cpu")) == pairs
    too_small = PrewarmConfig(batch_size=pairs, max_memory_mb=per_view.fixed_mb, **QUIET)
    with pytest.raises(ConfigError, match="too small"):
        chunk_pairs_for_budget(network, too_small, pairs, 64, torch.device("cpu"))


def test_prewarming_under_a_budget_keeps_the_batch_and_stays_within_it(make_squares) -> None:
    images = make_squares(64, 96, seed=4)
    budget_mb = 150.0
    model = build_model("hxr100", 2)
    config = PrewarmConfig(epochs=1, batch_size=64, max_memory_mb=budget_mb, **QUIET)
    with PeakMemoryMeter("cpu") as meter:
        result = prewarm_encoder(model, images, config)
    assert result.batch_size == 64 and 1 < result.chunk_size < 64
    assert meter.peak_mb <= budget_mb  # the meter's sensitivity is tested in test_metrics
    assert result.losses and result.losses[0] > 0
