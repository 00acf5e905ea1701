"""Flower's aggregation rules, configured from the run config and told our record keys.

The rules are Flower's own (`flwr.serverapp.strategy`); this module only picks one by name,
passes the protocol's record keys (so nothing relies on them matching Flower's defaults) and
NaN-aware metric averaging, and wraps it for differential privacy when that is on.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from protocol.records import ARRAYS_KEY, CONFIG_KEY, WEIGHT_KEY
from protocol.schedule import PHASES, Phase
from server.differential_privacy import add_differential_privacy
from server.metric_aggregation import aggregate_metric_records
from server.run_config import FederationConfig

# The server steps where the run config leaves them to the rule: FedAvgM's full step, which is
# plain FedAvg's, and the adaptive rules' eta.
FEDAVGM_LEARNING_RATE = 1.0
ADAPTIVE_ETA = 0.01


def make_flower_strategy(config: FederationConfig) -> FedAvg:
    """The aggregation rule named in the run config. It is handed only the clinics
    `server.node_sampling` drew for the round, and takes them all."""
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
        "weighted_by_key": WEIGHT_KEY,
        "arrayrecord_key": ARRAYS_KEY,
        "configrecord_key": CONFIG_KEY,
        "train_metrics_aggr_fn": aggregate_metric_records,
        "evaluate_metrics_aggr_fn": aggregate_metric_records,
    }
    if config.strategy == "fedprox":
        return FedProx(**common, proximal_mu=config.proximal_mu)
    if config.strategy == "fedavgm":
        step = config.server_learning_rate or FEDAVGM_LEARNING_RATE
        return FedAvgM(**common, server_learning_rate=step, server_momentum=config.server_momentum)
    eta = config.server_learning_rate or ADAPTIVE_ETA
    if config.strategy == "fedadam":
        return FedAdam(**common, eta=eta, eta_l=config.learning_rate)
    if config.strategy == "fedyogi":
        return FedYogi(**common, eta=eta, eta_l=config.learning_rate)
    if config.strategy == "fedmedian":
        return FedMedian(**common)
    if config.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=config.trim_fraction)
    if config.strategy == "krum":
        return Krum(**common, num_malicious_nodes=config.assumed_malicious)
    return FedAvg(**common)


def make_phase_strategies(config: FederationConfig) -> dict[Phase, Strategy]:
    """One Flower strategy per phase: adaptive server optimisers (FedAdam) keep moments per
    weight name, and the phases exchange different names."""
    strategies = {phase: make_flower_strategy(config) for phase in PHASES}
    return add_differential_privacy(strategies, config)
