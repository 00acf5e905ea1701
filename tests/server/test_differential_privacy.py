"""Client-level differential privacy: the accountant, the sites' clipping, the server's noise,
and the (epsilon, delta) a private `hxr simulate` run reports."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from scipy.optimize import brentq
from scipy.stats import norm

from hxr_cli.main import main
from hxr_model.errors import ConfigError
from protocol.arrays import from_record, to_record
from protocol.records import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY
from protocol.schedule import phase_state
from server.differential_privacy import ClinicLevelPrivacy, make_accountant, privacy_spent
from server.federation import initial_state
from server.run_config import FederationConfig
from server.update_validation import UpdateRejected, check_update

CLIPPING_NORM = "clipping_norm"  # the key Flower's DP strategies send their sites


def private(**overrides) -> FederationConfig:
    values = {"classes": ["normal", "pneumonia"], "dp_noise_multiplier": 1.0, "min_nodes": 2}
    return FederationConfig(**(values | overrides))


def exact_gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """The tight epsilon of `releases` Gaussian releases of sensitivity 1 (one Gaussian with
    mu = sqrt(releases) / noise_multiplier): Balle & Wang 2018, Theorem 8."""
    mu = math.sqrt(releases) / noise_multiplier

    def excess(epsilon: float) -> float:
        tail = math.exp(epsilon) * norm.cdf(-mu / 2 - epsilon / mu)
        return norm.cdf(mu / 2 - epsilon / mu) - tail - delta

    return brentq(excess, 0.0, 100.0)


def classic_rdp_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Gaussian RDP T * a / (2 z^2) (Mironov 2017, Prop. 7) turned into (epsilon, delta) with
    Prop. 3, minimised over the order a by hand: a looser bound than the accountant's."""
    rate = releases / (2 * noise_multiplier**2)
    return rate + 2 * math.sqrt(rate * math.log(1 / delta))


def test_the_accountant_reproduces_a_published_value_and_composes_rounds() -> None:
    # dp-accounting's own test: noise multiplier 4.530877117 gives exactly (1, 1e-6)-DP.
    once = privacy_spent(private(dp_noise_multiplier=4.530877117, dp_delta=1e-6), 1)
    assert once.epsilon == pytest.approx(1.0, abs=1e-3) and once.delta == 1e-6
    # Four releases at twice the noise are one release at the original noise.
    four = privacy_spent(private(dp_noise_multiplier=2 * 4.530877117, dp_delta=1e-6), 4)
    assert four.epsilon == pytest.approx(once.epsilon, rel=1e-6)

    config = private(dp_noise_multiplier=1.0, dp_delta=1e-5)
    spent = [privacy_spent(config, rounds).epsilon for rounds in range(4)]
    assert spent[0] == 0.0 and spent[1] < spent[2] < spent[3]
    for rounds in (2, 10):
        epsilon = privacy_spent(config, rounds).epsilon
        assert exact_gaussian_epsilon(1.0, rounds, 1e-5) < epsilon
        assert epsilon < classic_rdp_epsilon(1.0, rounds, 1e-5)


def test_privacy_settings_are_checked_and_switch_off_the_statistics_query() -> None:
    assert FederationConfig(classes=["a", "b"]).recalibrate_statistics
    assert not private().recalibrate_statistics
    with pytest.raises(ConfigError, match="dp-noise-multiplier needs strategy fedavg or fedprox"):
        FederationConfig.from_run_config(
            {"classes": "a,b", "dp-noise-multiplier": 1.0, "strategy": "fedadam"}
        )
    with pytest.raises(ConfigError, match="recalibrate-statistics = false"):
        FederationConfig.from_run_config(
            {"classes": "a,b", "dp-noise-multiplier": 1.0, "recalibrate-statistics": True}
        )


def update_norm(update: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(np.sum((update[k].astype(np.float64) - sent[k]) ** 2) for k in sent))


def test_a_site_clips_its_update_when_the_server_asks(make_grid, make_config) -> None:
    grid = make_grid()
    config = make_config()
    sent = from_record(to_record(phase_state(initial_state(config), "finetune")))  # as sent
    instructions = config.round_instructions(2, "finetune").to_config()
    bound = 0.05

    def train(extra: dict) -> dict[str, np.ndarray]:
        content = RecordDict(
            {ARRAYS_KEY: to_record(sent), CONFIG_KEY: ConfigRecord(instructions | extra)}
        )
        message = Message(content, dst_node_id=100, message_type=MessageType.TRAIN)
        (reply,) = grid.send_and_receive([message])
        assert not reply.has_error()
        return from_record(reply.content[ARRAYS_KEY])

    clipped, plain = train({CLIPPING_NORM: bound}), train({})
    assert update_norm(plain, sent) > 10 * bound
    assert update_norm(clipped, sent) == pytest.approx(bound, rel=1e-4)
    # The server's check holds a site to the norm, so one that skips clipping is refused.
    check_update(clipped, sent, config.max_update_ratio, clipping_norm=bound)
    check_update(plain, sent, config.max_update_ratio)
    with pytest.raises(UpdateRejected, match="exceeds the clipping norm"):
        check_update(plain, sent, config.max_update_ratio, clipping_norm=bound)


def test_the_average_is_uniform_noised_with_the_configured_std_and_keeps_variances(
    make_grid,
) -> None:
    config = private(dp_noise_multiplier=0.5, dp_clipping_norm=2.0, min_nodes=2)
    strategy = ClinicLevelPrivacy(
        FedAvg(), config, make_accountant(config), rng=np.random.default_rng(0)
    )
    size = 200_000
    sent = {"weight": np.zeros(size, np.float32), "bn.running_var": np.zeros(size, np.float32)}
    messages = list(strategy.configure_train(1, to_record(sent), ConfigRecord(), make_grid()))
    assert [m.content[CONFIG_KEY][CLIPPING_NORM] for m in messages] == [2.0, 2.0]

    def reply(message: Message, value: float, examples: int) -> Message:
        arrays = {name: np.full(size, value, np.float32) for name in sent}
        content = {
            ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            METRICS_KEY: MetricRecord({"num-examples": examples, "train-loss": 0.1}),
        }
        return Message(RecordDict(content), reply_to=message)

    # Sites of very different sizes: a weighted mean would be near 3.8, the uniform one is 2.5.
    replies = [reply(messages[0], 1.0, 10), reply(messages[1], 4.0, 1000)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    arrays = from_record(aggregated)
    noise = arrays["weight"] - 2.5
    expected_std = 0.5 * 2.0 / 2  # z * C / n
    assert abs(noise.mean()) < 5 * expected_std / math.sqrt(size)
    assert noise.std() == pytest.approx(expected_std, rel=0.01)
    assert arrays["bn.running_var"].min() >= 0.0
    assert strategy.privacy_spent().num_releases == 1


def test_a_round_must_train_exactly_the_clinics_the_accountant_assumes(make_grid) -> None:
    config = private(min_nodes=2)
    strategy = ClinicLevelPrivacy(FedAvg(min_train_nodes=2), config, make_accountant(config))
    three_clinics = make_grid(ClientApp())
    with pytest.raises(ConfigError, match="min-nodes"):
        strategy.configure_train(1, ArrayRecord(), ConfigRecord(), three_clinics)


@pytest.mark.slow
def test_a_private_simulation_reports_epsilon_and_delta(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    arguments = ["simulate", "--data", "synthetic:48:2", "--sites", "2", "--rounds", "2"]
    arguments += ["--prewarm-rounds", "1", "--image-size", "32", "--batch-size", "16"]
    arguments += ["--dp-noise-multiplier", "1.0", "--dp-clipping-norm", "0.05"]
    arguments += ["--local-epochs", "1", "--no-local-baselines"]
    assert main([*arguments, "--cpus", "2", "--out", str(out)]) == 0

    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    # Both phases trained both clinics; the server's clipping check would have refused any
    # update the sites had not clipped to 0.05, and no statistics query ran.
    assert [sorted(r["train"]["sites"]) for r in records] == [["site-1", "site-2"]] * 2
    assert not any(r["rejected"] or r["failures"] or r["statistics"] for r in records)
    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["differential_privacy"]
    expected = privacy_spent(private(dp_noise_multiplier=1.0), 2).epsilon
    assert privacy == {
        "noise_multiplier": 1.0,
        "clipping_norm": 0.05,
        "delta": 1e-5,
        "epsilon": pytest.approx(expected),
        "rounds": 2,
    }
    assert exact_gaussian_epsilon(1.0, 2, 1e-5) < privacy["epsilon"] < 8.0
    assert "Differential privacy per clinic: (ε = 7.08, δ = 1e-05)" in (
        out / "report.html"
    ).read_text(encoding="utf-8")
    assert "epsilon 7.08 at delta 1e-05 per clinic over 2 round(s)" in capsys.readouterr().out
