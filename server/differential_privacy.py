"""Client-level differential privacy: Flower's central DP with client-side clipping, accounted.

With `dp-noise-multiplier` z > 0 every training round (pre-warm and fine-tuning alike) is one
Gaussian release: each site clips its update (weights and BatchNorm statistics together) to the
L2 norm C with Flower's `fixedclipping_mod` (`client.client_app.clip_when_asked`), the server
averages the n sampled sites' updates uniformly and adds N(0, (zC/n)^2) to every coordinate, so
the sum of updates carries noise z times its sensitivity C to adding or removing one clinic.
Flower's RDP accountant (`flwr.serverapp.RdpAccountant`, backed by Google's `dp-accounting`)
composes the releases into (epsilon, delta). Flower's accounted mode checks what makes that
true: FedAvg's aggregation, equal weights and every sampled site in the average (a round with a
missing or rejected site releases nothing). Not covered, as in Flower: the metrics and Grad-CAM
samples sites send, which are theirs to share by policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import (
    Grid,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy
from flwr.supercore.differential_privacy import compute_stdv
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

from hxr_model.errors import ConfigError
from protocol.schedule import VAR_SUFFIX, Phase
from server.round_record import RoundRecord
from server.run_config import FederationConfig


def enabled(config: FederationConfig) -> bool:
    return config.dp_noise_multiplier > 0


def clipping_bound(config: FederationConfig) -> float | None:
    """The norm every site's update must respect, for `check_update`; None without DP."""
    return config.dp_clipping_norm if enabled(config) else None


def make_accountant(config: FederationConfig) -> RdpAccountant:
    """One clinic is the privacy unit; every round trains all `min-nodes` clinics, so sampling
    amplifies nothing (the only sampling model Flower's fixed-clipping accounting accepts)."""
    return RdpAccountant(
        PrivacyConfig(
            target_delta=config.dp_delta,
            population_size=config.min_nodes,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def round_event(config: FederationConfig) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(
        noise_multiplier=config.dp_noise_multiplier,
        sample_size=config.min_nodes,
        population_size=config.min_nodes,
    )


def privacy_spent(config: FederationConfig, releases: int) -> PrivacySpent:
    """(epsilon, delta) after `releases` noised rounds."""
    accountant = make_accountant(config)
    if releases:
        accountant.compose(round_event(config), count=releases)
    return accountant.get_privacy_spent()


def privacy_summary(
    config: FederationConfig, records: Sequence[RoundRecord]
) -> dict[str, float | int] | None:
    """summary.json's `differential_privacy`, None without DP.

    Recomputed from the run's records, so a resumed run accounts for the rounds before the
    restart. Every round that aggregated at least one update counts as a release: an upper
    bound, as Flower releases nothing in a round where a sampled site was missing or rejected.
    """
    if not enabled(config):
        return None
    releases = sum(1 for record in records if record.train.sites)
    spent = privacy_spent(config, releases)
    return {
        "noise_multiplier": config.dp_noise_multiplier,
        "clipping_norm": config.dp_clipping_norm,
        "delta": spent.delta,
        "epsilon": spent.epsilon,
        "rounds": releases,
    }


class ClinicLevelPrivacy(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper, fitted to the consortium:

    - averages uniformly: a weight by example count would give a large site more than 1/n of
      the average (so more than the noise covers) and Flower's accountant refuses it;
    - draws its noise from its own entropy-seeded generator: training code re-seeds NumPy's
      global one with the run's (public) seed, which would make the noise predictable;
    - clamps noised BatchNorm variances at zero (post-processing, free under DP): a negative
      variance breaks the model and fails every site's next update check;
    - turns Flower's sample-size mismatch into a one-line user error.
    """

    def __init__(
        self,
        strategy: FedAvg,
        config: FederationConfig,
        accountant: RdpAccountant,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            strategy,
            config.dp_noise_multiplier,
            config.dp_clipping_norm,
            config.min_nodes,
            accountant=accountant,
        )
        self.rng = rng or np.random.default_rng()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        try:
            return super().configure_train(server_round, arrays, config, grid)
        except ValueError as error:
            raise ConfigError(
                f"differential privacy: {error} The accountant assumes every round trains "
                f"exactly min-nodes ({self.num_sampled_clients}) clinics; set min-nodes to the "
                f"number of clinics in the consortium"
            ) from None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        weight_key = self.strategy.weighted_by_key
        for reply in replies:
            for name, metrics in list(reply.content.metric_records.items()):
                reply.content[name] = MetricRecord({**metrics, weight_key: 1})
        return super().aggregate_train(server_round, replies)

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        noised = {}
        for name, array in aggregated_arrays.items():
            values = array.numpy()
            values = values + self.rng.normal(0.0, std, values.shape).astype(values.dtype)
            if name.endswith(VAR_SUFFIX):
                values = np.maximum(values, 0)
            noised[name] = Array(values)
        log(INFO, "aggregate_train: differential privacy noise with std %.4g added", std)
        return ArrayRecord(noised)


def add_differential_privacy(
    strategies: Mapping[Phase, FedAvg], config: FederationConfig
) -> dict[Phase, Strategy]:
    """Each phase's aggregation rule, wrapped when DP is on; one accountant composes the
    releases of both phases, which train the same clinics' data."""
    if not enabled(config):
        return dict(strategies)
    accountant = make_accountant(config)
    return {
        phase: ClinicLevelPrivacy(strategy, config, accountant)
        for phase, strategy in strategies.items()
    }
