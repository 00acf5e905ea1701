"""Each federated optimisation option does to what the server sends or aggregates what its name
says: the round-to-round learning-rate schedule, server momentum, and statistics that server
optimisers leave alone."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Message
from flwr.serverapp.strategy import FedAvgM

from hxr_model.training import cross_entropy_objective, logit_adjustment
from protocol.arrays import from_record
from protocol.records import ARRAYS_KEY, CONFIG_KEY
from protocol.schedule import is_statistic
from server.federation import run_federation
from server.label_prior import pooled_label_share
from server.optimiser_state import optimiser_state, restore_optimiser_state
from server.recalibration import pool_statistics
from server.run_config import FederationConfig
from server.run_store import RunStore
from server.strategy_factory import make_flower_strategy

from .conftest import SITES, LocalGrid
from .test_hostile_clinics import clinic, records_of


def rates(**settings) -> list[float]:
    config = FederationConfig(classes=["a", "b"], **settings)
    return [
        config.round_instructions(k, config.phase(k)).learning_rate
        for k in range(1, config.num_server_rounds + 1)
    ]


def test_the_server_lowers_the_local_rate_by_a_cosine_over_each_phase() -> None:
    schedule = {"num_server_rounds": 6, "prewarm_rounds": 2}
    schedule |= {"learning_rate": 0.1, "prewarm_learning_rate": 0.01}
    prewarm, finetune = rates(**schedule)[:2], rates(**schedule)[2:]
    assert prewarm == pytest.approx([0.01, 0.005])
    assert finetune[0] == pytest.approx(0.1)
    assert all(later < earlier for earlier, later in pairwise(finetune))
    assert finetune[-1] == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 3 / 4)))
    assert rates(**schedule, lr_schedule="constant")[2:] == pytest.approx([0.1] * 4)


def test_fedavgm_is_configured_with_the_run_configs_momentum() -> None:
    strategy = make_flower_strategy(
        FederationConfig(classes=["a", "b"], strategy="fedavgm", server_momentum=0.7)
    )
    assert isinstance(strategy, FedAvgM) and strategy.server_momentum == 0.7


def test_the_server_steps_default_to_each_rules_own() -> None:
    def made(**settings):
        return make_flower_strategy(FederationConfig(classes=["a", "b"], **settings))

    assert made(strategy="fedavgm").server_learning_rate == 1.0
    assert made(strategy="fedavgm", server_learning_rate=0.5).server_learning_rate == 0.5
    assert made(strategy="fedadam").eta == 0.01
    assert made(strategy="fedyogi", server_learning_rate=0.1).eta == 0.1
    assert FederationConfig.from_run_config(
        {"classes": "a,b", "server-learning-rate": ""}
    ).server_learning_rate is None  # fmt: skip


def test_a_fedavgm_step_of_one_half_moves_the_weights_half_way_to_the_average(
    make_config,
) -> None:
    """Momentum 0, server learning rate 0.5: each weight lands half-way between what the
    server sent and the clinics' weighted average (statistics are pooled, not stepped)."""
    received: dict[str, dict[str, np.ndarray]] = {}
    sent: dict[str, dict[str, np.ndarray]] = {}

    def keeper(name: str):
        def keep(message: Message, reply: Message) -> Message:
            received[name] = from_record(message.content[ARRAYS_KEY])
            sent[name] = from_record(reply.content[ARRAYS_KEY])
            return reply

        return clinic(name, train=keep)

    grid = LocalGrid({100 + k: keeper(f"clinic-{k}") for k in range(SITES)}, SITES)
    config = make_config(
        num_server_rounds=1, prewarm_rounds=0, strategy="fedavgm", server_momentum=0.0,
        server_learning_rate=0.5, recalibrate_statistics=False,
    )  # fmt: skip
    run_dir = run_federation(grid, config, 1)
    weights = records_of(run_dir)[0]["weighted_examples"]
    total = sum(weights.values())
    start = next(iter(received.values()))
    state = RunStore(run_dir).load_state().arrays
    moved = [name for name in start if not is_statistic(name)]
    assert moved
    for name in moved:
        average = sum(sent[site][name] * weights[site] for site in sent) / total
        assert not np.allclose(average, start[name])
        np.testing.assert_allclose(
            state[name], start[name] + 0.5 * (average - start[name]), rtol=1e-5, atol=1e-6,
            err_msg=name,
        )  # fmt: skip


def test_fedavgm_momentum_survives_a_restart_in_the_weights_order() -> None:
    strategy = FedAvgM(server_momentum=0.9)
    strategy.momentum_vector = [np.full(2, 1.0), np.full(3, 2.0)]
    saved = optimiser_state({"finetune": strategy})
    restored = FedAvgM(server_momentum=0.9)
    restore_optimiser_state({"finetune": restored}, saved)
    assert [a.tolist() for a in restored.momentum_vector] == [[1.0, 1.0], [2.0, 2.0, 2.0]]


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_server_optimisers_pool_batchnorm_statistics_instead_of_stepping_them(
    make_config, strategy: str
) -> None:
    """Without recalibration the global statistics after a round are exactly the clinics'
    pooled ones; an Adam or momentum step on them would land elsewhere."""
    sent: dict[str, dict[str, np.ndarray]] = {}

    def keeper(name: str):
        def keep(message: Message, reply: Message) -> Message:
            sent[name] = from_record(reply.content[ARRAYS_KEY])
            return reply

        return clinic(name, train=keep)

    grid = LocalGrid({100 + k: keeper(f"clinic-{k}") for k in range(3)}, SITES)
    grid.contexts[102].node_config["partition-id"] = 0
    config = make_config(
        num_server_rounds=1, prewarm_rounds=0, min_nodes=3, strategy=strategy,
        recalibrate_statistics=False,
    )  # fmt: skip
    run_dir = run_federation(grid, config, 1)
    (record,) = records_of(run_dir)
    weights = record["weighted_examples"]
    expected = pool_statistics(
        [({n: a for n, a in arrays.items() if is_statistic(n)}, weights[name])
         for name, arrays in sorted(sent.items())]
    )  # fmt: skip
    state = RunStore(run_dir).load_state().arrays
    assert expected
    for name, array in expected.items():
        np.testing.assert_allclose(state[name], array, rtol=1e-5, atol=1e-6, err_msg=name)


def test_fedrs_scales_only_the_logits_of_classes_the_clinic_lacks() -> None:
    """A clinic holding classes 0 and 2 of 3: class 1's logit is scaled in its local loss."""
    logits = torch.tensor([[2.0, 4.0, 1.0], [0.5, 3.0, 2.5]])
    labels = torch.tensor([0, 2])
    scale = torch.tensor([1.0, 0.5, 1.0])
    objective = cross_entropy_objective(None, 0.0, scale)
    loss = objective(lambda images: logits, torch.zeros(2, 1, 4, 4), labels)
    expected = F.cross_entropy(logits * scale, labels)
    assert float(loss) == pytest.approx(float(expected))
    assert float(loss) < float(F.cross_entropy(logits, labels))  # the absent class pulls less
    config = FederationConfig(classes=["a", "b"], absent_class_scale=0.5)
    assert config.round_instructions(3, "finetune").absent_class_scale == 0.5


def test_logit_adjusted_loss_learns_the_scores_of_the_label_share_it_targets() -> None:
    """A clinic with 90 % of class 0: plain cross-entropy teaches the head that share (bias gap
    log 9); the logit-adjusted loss teaches the share it is told to target instead: equal shares
    (gap 0), or the federation's 75 % (gap log 3), whatever the clinic's own mix."""
    labels = torch.tensor([0] * 90 + [1] * 10)

    def learned_bias_gap(offset: torch.Tensor | None) -> float:
        bias = torch.zeros(2, requires_grad=True)
        objective = cross_entropy_objective(None, 0.0, None, offset)
        optimiser = torch.optim.SGD([bias], lr=1.0)
        for _ in range(300):
            optimiser.zero_grad()
            objective(
                lambda images: bias.expand(len(images), 2), torch.zeros(100, 1), labels
            ).backward()
            optimiser.step()
        return float((bias[0] - bias[1]).detach())

    equal = logit_adjustment(labels.numpy(), 2, [])
    assert torch.allclose(equal, torch.log(torch.tensor([0.9, 0.1]) / 0.5))
    assert learned_bias_gap(None) == pytest.approx(math.log(9), abs=0.01)
    assert learned_bias_gap(equal) == pytest.approx(0.0, abs=0.01)
    pooled = logit_adjustment(labels.numpy(), 2, [0.75, 0.25])
    assert learned_bias_gap(pooled) == pytest.approx(math.log(3), abs=0.01)


def test_clinics_are_sent_the_pooled_validation_label_share_of_the_last_evaluated_round(
    make_config,
) -> None:
    """Round 1 targets equal shares; round 2 the share of round 1's summed validation counts."""
    asked: list[dict] = []

    def keeper(name: str):
        def keep(message: Message, reply: Message) -> Message:
            asked.append(dict(message.content[CONFIG_KEY]))
            return reply

        return clinic(name, train=keep)

    grid = LocalGrid({100 + k: keeper(f"clinic-{k}") for k in range(SITES)}, SITES)
    config = make_config(num_server_rounds=2, prewarm_rounds=0, local_imbalance="logit-adjusted")
    run_dir = run_federation(grid, config, 1)
    first = records_of(run_dir)[0]["evaluate"]["sites"].values()
    classes = len(config.classes)
    counts = sum(
        np.reshape(site["val-confusion-matrix"], (classes, classes)).sum(axis=1) for site in first
    )
    assert counts.min() > 0
    assert [a["class-prior"] for a in asked[:SITES]] == [[]] * SITES
    for instructions in asked[SITES:]:
        assert instructions["imbalance"] == "logit-adjusted"
        np.testing.assert_allclose(instructions["class-prior"], counts / counts.sum())
    # A resumed run reads the share from the stored rounds: round 2's, the last evaluated.
    last = records_of(run_dir)[1]["evaluate"]["sites"].values()
    counts = sum(
        np.reshape(site["val-confusion-matrix"], (classes, classes)).sum(axis=1) for site in last
    )
    resumed = pooled_label_share(RunStore(run_dir).read_rounds(), classes)
    np.testing.assert_allclose(resumed, counts / counts.sum())


def test_a_clinic_lacking_a_class_keeps_plain_cross_entropy() -> None:
    """Its log share of that class is minus infinity: no adjustment is defined."""
    assert logit_adjustment(np.array([0, 0, 2]), 3, []) is None


def test_a_clinic_whose_mix_sampling_explains_keeps_plain_cross_entropy() -> None:
    """33/26/26/32/25/25 images of six classes (a demo phantom clinic) is what drawing equal
    shares gives (chi-square p = 0.79): no offset. 80/20 against a 75/25 federation is too, on
    100 images (p = 0.25), but not on 1,000 (p = 0.0003), where it is corrected."""
    demo = np.repeat(np.arange(6), [33, 26, 26, 32, 25, 25])
    assert logit_adjustment(demo, 6, []) is None
    few, many = (np.repeat([0, 1], [8 * n, 2 * n]) for n in (10, 100))
    assert logit_adjustment(few, 2, [0.75, 0.25]) is None
    offset = logit_adjustment(many, 2, [0.75, 0.25])
    assert offset is not None
    assert torch.allclose(offset, torch.log(torch.tensor([0.8 / 0.75, 0.2 / 0.25])))


def test_uniform_weighting_gives_every_clinic_one_vote(make_grid, make_config) -> None:
    config = make_config(num_server_rounds=1, prewarm_rounds=0, clinic_weighting="uniform")
    (record,) = records_of(run_federation(make_grid(), config, 1))
    assert record["weighted_examples"] == {"site-1": 1, "site-2": 1}
