"""A clinic's round work without Flower: what it trains, what it sends back, what it shares."""

import numpy as np
import pytest

from client.local_rounds import evaluate_round, finetune_round, prewarm_round, statistics_round
from client.site_config import simulated_site
from client.site_data import label_mapping, load_site_data
from hxr_model.data.phantoms import PHANTOM_CLASSES
from hxr_model.errors import ConfigError
from hxr_model.models import build_model
from hxr_model.prewarm import ProjectionHead
from protocol.instructions import RoundInstructions
from protocol.model_state import federated_state
from protocol.replies import EvaluateMetrics, FinetuneMetrics, PrewarmMetrics, StatisticsMetrics
from protocol.schedule import phase_state
from server.run_config import FederationConfig

CLASSES = list(PHANTOM_CLASSES)


@pytest.fixture(scope="module")
def global_state() -> dict[str, np.ndarray]:
    model = build_model("hxr50", len(CLASSES))
    return federated_state(model, ProjectionHead(model.feature_dim, 64))


def instructions(phase: str, server_round: int = 3) -> RoundInstructions:
    config = FederationConfig(
        classes=CLASSES, image_size=32, batch_size=16, gradcam_per_class=1, local_epochs=1
    )
    return config.round_instructions(server_round, phase)


def site(index: int = 0, **settings):
    return simulated_site(index, 2, "synthetic:48:2", "by-source", 0, **settings)


def data_of(site_config):
    return load_site_data(site_config, CLASSES, 32)


def test_prewarm_trains_and_returns_only_encoder_and_projection(global_state) -> None:
    sent = phase_state(global_state, "prewarm")
    update, metrics = prewarm_round(sent, instructions("prewarm"), site(), data_of(site()))
    assert set(update) == set(sent)
    assert not any(name.startswith("head.") for name in update)
    assert any(name.startswith("projection.") for name in update)
    assert isinstance(metrics, PrewarmMetrics)
    data = data_of(site())
    assert metrics.num_examples == len(data.train) + len(data.val)
    name = next(n for n in sent if n.startswith("encoder.") and n.endswith(".weight"))
    assert not np.allclose(update[name], sent[name])


def test_finetuning_is_reproducible_per_round_and_site(global_state) -> None:
    sent = phase_state(global_state, "finetune")
    first, metrics = finetune_round(sent, instructions("finetune"), site(), data_of(site()))
    again, _ = finetune_round(sent, instructions("finetune"), site(), data_of(site()))
    later, _ = finetune_round(
        sent, instructions("finetune", server_round=4), site(), data_of(site())
    )
    assert set(first) == set(sent) and not any(n.startswith("projection.") for n in first)
    assert isinstance(metrics, FinetuneMetrics)
    assert len(metrics.per_class_recall) == len(CLASSES)
    assert all(np.array_equal(first[n], again[n]) for n in first)
    assert not all(np.array_equal(first[n], later[n]) for n in first)


def test_batchnorm_statistics_are_measured_for_the_weights_received(global_state) -> None:
    sent = phase_state(global_state, "finetune")
    statistics, metrics = statistics_round(sent, instructions("finetune"), site(), data_of(site()))
    assert statistics and all(
        name.endswith((".running_mean", ".running_var")) for name in statistics
    )
    assert set(statistics) == {n for n in sent if n.endswith((".running_mean", ".running_var"))}
    assert metrics == StatisticsMetrics(num_examples=len(data_of(site()).train))
    assert all(np.all(a >= 0) for n, a in statistics.items() if n.endswith("running_var"))
    name = next(n for n in statistics if n.endswith(".running_mean"))
    assert not np.allclose(statistics[name], sent[name])  # fresh models start from zero means


@pytest.mark.parametrize("policy", ["none", "heatmap", "overlay"])
def test_evaluation_shares_gradcam_samples_only_as_the_policy_allows(
    global_state, policy: str
) -> None:
    config = site(privacy=policy)
    sent = phase_state(global_state, "finetune")
    metrics, samples = evaluate_round(sent, instructions("finetune"), config, data_of(config))
    assert isinstance(metrics, EvaluateMetrics)
    assert sum(metrics.confusion_matrix) == metrics.num_examples
    if policy == "none":
        assert samples is None
        return
    count = len(samples.labels)
    assert 1 <= count <= len(CLASSES) and len(set(samples.labels)) == count  # one per class
    # Shared samples are at most half the input side (32 px here): never a full-size image.
    assert samples.heatmaps.shape == (count, 16, 16) and samples.heatmaps.dtype == np.uint8
    assert (samples.images is not None) == (policy == "overlay")
    if samples.images is not None:
        assert samples.images.shape == (count, 16, 16) and samples.images.dtype == np.uint8


def test_site_labels_are_reindexed_into_the_federation_order() -> None:
    mapping = label_mapping("north", ["pneumonia", "normal"], ["normal", "pneumonia"])
    assert mapping.tolist() == [1, 0]
    with pytest.raises(ConfigError, match="'opacity' that the model does not know"):
        label_mapping("north", ["opacity"], ["normal", "pneumonia"])


def test_a_small_clinic_trains_more_epochs_to_reach_the_minimum_local_steps(global_state) -> None:
    sent = phase_state(global_state, "finetune")
    data = data_of(site())
    batches = -(-len(data.train) // 16)  # batch size 16, no partial batch of one image here
    plain = instructions("finetune")
    _, metrics = finetune_round(sent, plain, site(), data)
    assert metrics.local_steps <= batches  # one local epoch, its best (or last) epoch's steps
    more = plain.model_copy(update={"min_local_steps": 3 * batches, "keep_best_epoch": False})
    _, metrics = finetune_round(sent, more, site(), data)
    assert metrics.local_steps == 3 * batches


def test_on_phantoms_the_evaluate_reply_scores_heat_maps_against_the_lesions(global_state) -> None:
    data = data_of(site())
    metrics, _ = evaluate_round(phase_state(global_state, "finetune"), instructions("finetune"),
                                site(), data)  # fmt: skip
    masks = data.evaluation.dataset.masks
    with_lesion = int(masks.reshape(len(masks), -1).any(axis=1).sum())
    assert metrics.localisation_images == min(with_lesion, 64) > 0
    assert 0 <= metrics.pointing_game <= 1 and 0 <= metrics.energy_in_mask <= 1
    lesion_share = masks.reshape(len(masks), -1).mean(axis=1)
    assert metrics.mask_area == pytest.approx(lesion_share[lesion_share > 0].mean(), rel=1e-5)
