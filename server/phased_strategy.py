"""Flower's strategies, with what a clinical federation adds around them.

`PhasedStrategy` is itself a Flower `Strategy`, driven by `Strategy.start`. It keeps the full
global state (classifier + SimCLR projection head) and, per round:
- sends only what the round's phase trains (pre-warm: encoder + projection head; fine-tune: the
  classifier) and asks for evaluation only in fine-tuning rounds;
- screens every reply (`server.reply_screening`), checks each update's arrays before decoding
  them and their values after (`server.update_validation`), and hands Flower's FedAvg / FedProx
  / FedAdam / FedMedian clean copies of the accepted replies only;
- before evaluating, pools the BatchNorm statistics of the aggregated weights measured at the
  trained sites (`server.recalibration`);
- fills the round's `RoundRecord` and commits it with the Grad-CAM samples and the global state
  from `start`'s end-of-round hook (`evaluate_fn`).

A site that fails, or stays silent past the round timeout, loses its update for that round; the
round goes on with the others' replies, and its record names the site and the reason. Each
record also holds digests of the global weights the round started from and ended with: every
round, also across a restart, must start from where the one before ended. Rounds are numbered
globally (`first_round` after a resume), so schedules and FedAdam's bias correction continue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from protocol.arrays import decode_checked, from_record, specs_of, to_record
from protocol.gradcam_samples import GradcamSamples, parse_samples
from protocol.records import ARRAYS_KEY, METRICS_KEY
from protocol.replies import TRAIN_METRICS, EvaluateMetrics, Metrics, ReplyRejected
from protocol.schedule import Phase, is_statistic, phase_state
from server.differential_privacy import clipping_bound
from server.example_weights import capped_examples
from server.grid_views import SampledGrid
from server.label_prior import pooled_label_share
from server.node_sampling import draw_clinics, sample_size
from server.optimiser_state import OptimiserState, optimiser_state, restore_optimiser_state
from server.recalibration import Pooling, pool_statistics, recalibrate
from server.reply_screening import ReplyScreen, Screened, rejection_reason
from server.round_record import Incident, RoundRecord, Stage
from server.run_config import FederationConfig
from server.run_store import weights_digest
from server.strategy_factory import make_phase_strategies
from server.update_validation import check_update

NODE_WAIT_S = 1.0
# Rules with a server optimiser, whose step must not touch BatchNorm statistics.
SERVER_OPTIMISERS = frozenset({"fedavgm", "fedadam", "fedyogi"})
# Robust rules pool BatchNorm statistics robustly too, with equal weights.
STATISTICS_POOLING: dict[str, Pooling] = {
    "fedmedian": "median",
    "krum": "median",
    "fedtrimmedavg": "trimmed",
}

ArrayDict = dict[str, np.ndarray]
# (round record, Grad-CAM samples per site, global weights, optimiser state) after each round.
RoundHook = Callable[[RoundRecord, dict[str, GradcamSamples], ArrayDict, OptimiserState], None]


def pooled_statistics_of_updates(
    accepted: list[tuple[Screened, ArrayDict]], weights: dict[str, int]
) -> ArrayDict:
    """The accepted updates' BatchNorm statistics, pooled. Server optimisers (momentum, Adam)
    act on learned weights; statistics are measurements of images, to be pooled, never given
    momentum or an adaptive step."""
    measured = [
        ({n: a for n, a in update.items() if is_statistic(n)}, weights[screened.site])
        for screened, update in accepted
    ]
    return pool_statistics(measured) if measured and measured[0][0] else {}


def clean_reply(
    screened: Screened, arrays: ArrayDict | None = None, num_examples: int | None = None
) -> Message:
    """What Flower's aggregation sees of an accepted reply: its checked metrics (weighed by
    `num_examples` where given) and arrays only, rebuilt here, so nothing else a clinic put in
    its message reaches Flower's code."""
    metrics = screened.metrics
    if num_examples is not None:
        metrics = metrics.model_copy(update={"num_examples": num_examples})
    content = {METRICS_KEY: metrics.to_record()}
    if arrays is not None:
        content[ARRAYS_KEY] = to_record(arrays)
    return Message(
        RecordDict(content),
        dst_node_id=screened.node,
        message_type=screened.message.metadata.message_type,
    )


class PhasedStrategy(Strategy):
    """See the module docstring. `on_round_end(record, samples, arrays, optimiser_state)`."""

    def __init__(
        self,
        config: FederationConfig,
        on_round_end: RoundHook,
        first_round: int = 0,
        optimiser_state: OptimiserState | None = None,
        class_prior: Sequence[float] = (),
    ) -> None:
        self.config = config
        # What a logit-adjusted local loss targets: the latest evaluated round's label share.
        self.class_prior = list(class_prior)
        self.on_round_end = on_round_end
        self.first_round = first_round
        self.inner: dict[Phase, Strategy] = make_phase_strategies(config)
        restore_optimiser_state(self.inner, optimiser_state or {})
        self.screen = ReplyScreen(len(config.classes), self._note)
        self.global_state: ArrayDict = {}
        self.sent: ArrayDict = {}
        self.record = RoundRecord(round=1, phase="prewarm")
        self.samples: dict[str, GradcamSamples] = {}
        self.trained_nodes: list[int] = []
        self.round_started = 0.0

    # -- round bookkeeping -------------------------------------------------------------------

    def _round(self, server_round: int) -> tuple[int, Phase]:
        current = self.first_round + server_round
        return current, self.config.phase(current)

    def _note(self, kind: str, stage: Stage, site: str, reason: str) -> None:
        outcome = "rejected" if kind == "rejected" else "failed"
        log(WARNING, "round %d: %s %s %s: %s", self.record.round, site, stage, outcome, reason)
        incidents = self.record.rejected if kind == "rejected" else self.record.failures
        incidents.append(Incident(site=site, stage=stage, reason=reason))

    def _instructions(self, current: int, phase: Phase) -> ConfigRecord:
        instructions = self.config.round_instructions(current, phase, self.class_prior)
        return ConfigRecord(instructions.to_config())

    def wait_for_nodes(self, grid: Grid) -> None:
        """Flower sizes its sample from the nodes connected *now*; wait for the minimum first."""
        connected = len(list(grid.get_node_ids()))
        if connected < self.config.min_nodes:
            log(INFO, "Waiting for %d node(s), %d connected", self.config.min_nodes, connected)
        while len(list(grid.get_node_ids())) < self.config.min_nodes:
            time.sleep(NODE_WAIT_S)

    def draw(self, grid: Grid, current: int, stage: Stage) -> list[int]:
        """The connected clinics `stage` of round `current` takes (`server.node_sampling`)."""
        config = self.config
        fraction, minimum = (
            (config.fraction_train, config.min_train_nodes)
            if stage == "train"
            else (config.fraction_evaluate, config.min_evaluate_nodes)
        )
        nodes = sorted(grid.get_node_ids())
        count = sample_size(len(nodes), fraction, minimum)
        if count < len(nodes):
            self.screen.roll_call(grid, nodes, config.round_timeout)
            log(INFO, "round %d: %d of %d clinics drawn to %s", current, count, len(nodes), stage)
        return draw_clinics(
            {node: self.screen.site(node) for node in nodes}, count, config.seed, current, stage
        )

    # -- training ----------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        current, phase = self._round(server_round)
        self.round_started = time.perf_counter()
        self.samples = {}
        self.record = RoundRecord(round=current, phase=phase)
        self.wait_for_nodes(grid)
        self.screen.note_registered_names(grid)
        # After the first round the strategy's own state is newer than `start`'s: it also holds
        # the re-estimated BatchNorm statistics.
        self.global_state = self.global_state or from_record(arrays)
        self.record.weights_sha256["start"] = weights_digest(self.global_state)
        self.sent = phase_state(self.global_state, phase)
        if hasattr(self.inner[phase], "current_arrays"):
            # FedAvgM steps from the weights it last sent; the recalibrated statistics are ours.
            self.inner[phase].current_arrays = to_record(self.sent)
        drawn = SampledGrid(grid, self.draw(grid, current, "train"))
        messages = self.inner[phase].configure_train(
            current, to_record(self.sent), self._instructions(current, phase), drawn
        )
        return self.screen.sent(messages)

    def _checked_update(self, screened: Screened) -> ArrayDict:
        arrays = screened.message.content.array_records
        if list(arrays) != [ARRAYS_KEY]:
            raise ReplyRejected(f"expected one weight record '{ARRAYS_KEY}'")
        update = decode_checked(arrays[ARRAYS_KEY], specs_of(self.sent))
        config = self.config
        ratio = check_update(update, self.sent, config.max_update_ratio, clipping_bound(config))
        self.record.update_ratios[screened.site] = ratio
        return update

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current, phase = self._round(server_round)
        accepted: list[tuple[Screened, ArrayDict]] = []
        for screened in self.screen.screen(replies, "train", TRAIN_METRICS[phase]):
            try:
                accepted.append((screened, self._checked_update(screened)))
            except Exception as error:
                self._note("rejected", "train", screened.site, rejection_reason(error))
                continue
            self.record.train.sites[screened.site] = _as_record(screened.metrics)
        weights = capped_examples(
            {screened.site: screened.metrics.num_examples for screened, _ in accepted},
            self.config.max_examples,
            self.config.examples_cap_factor,
        )
        if self.config.clinic_weighting == "uniform":
            weights = dict.fromkeys(weights, 1)
        self.record.weighted_examples = weights
        clean = [clean_reply(s, update, weights[s.site]) for s, update in accepted]
        self.trained_nodes = [screened.node for screened, _ in accepted]
        aggregated, metrics = self.inner[phase].aggregate_train(current, clean)
        if metrics is not None:
            self.record.train.aggregate = dict(metrics)
        if aggregated is None:
            return None, metrics
        merged = dict(self.global_state)
        for name, array in from_record(aggregated).items():
            merged[name] = array.astype(self.global_state[name].dtype)
        if self.config.strategy in SERVER_OPTIMISERS:
            merged |= pooled_statistics_of_updates(accepted, weights)
        self.global_state = merged
        return to_record(merged), metrics

    # -- evaluation --------------------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        current, phase = self._round(server_round)
        if phase == "prewarm":
            return self.screen.sent([])
        instructions = self._instructions(current, "finetune")
        if self.config.recalibrate_statistics:
            pooled = recalibrate(
                grid,
                self.screen,
                phase_state(self.global_state, "finetune"),
                self.trained_nodes,
                instructions,
                self.config.round_timeout,
                self.config.max_update_ratio,
                self.record.statistics.append,
                STATISTICS_POOLING.get(self.config.strategy, "weighted"),
                self.config.trim_fraction,
            )
            self.global_state = {**self.global_state, **pooled}
        # The statistics above belong to the global model whether or not anyone evaluates it.
        evaluated = self.draw(grid, current, "evaluate")
        if not evaluated:
            return self.screen.sent([])
        classifier = phase_state(self.global_state, "finetune")
        messages = self.inner[phase].configure_evaluate(
            current, to_record(classifier), instructions, SampledGrid(grid, evaluated)
        )
        return self.screen.sent(messages)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        current, phase = self._round(server_round)
        config = self.config
        clean = []
        for screened in self.screen.screen(replies, "evaluate", EvaluateMetrics):
            self.record.evaluate.sites[screened.site] = _as_record(screened.metrics)
            clean.append(clean_reply(screened))
            try:
                samples = parse_samples(
                    screened.message.content,
                    len(config.classes),
                    config.gradcam_per_class,
                    config.round_instructions(current, "finetune").sample_side,
                )
            except Exception as error:
                reason = rejection_reason(error)
                log(
                    WARNING,
                    "round %d: %s Grad-CAM samples ignored: %s",
                    current,
                    screened.site,
                    reason,
                )
                continue
            if samples is not None:
                self.samples[screened.site] = samples
        metrics = self.inner[phase].aggregate_evaluate(current, clean)
        if metrics is not None:
            self.record.evaluate.aggregate = dict(metrics)
        self.class_prior = (
            pooled_label_share([self.record], len(config.classes)) or self.class_prior
        )
        return metrics

    # -- end of round ------------------------------------------------------------------------

    def optimiser_state(self) -> OptimiserState:
        return optimiser_state(self.inner)

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """`Strategy.start`'s `evaluate_fn`: called once per round after evaluation (and once
        before round 1, which has nothing to commit)."""
        if server_round == 0:
            return None
        self.record.seconds = time.perf_counter() - self.round_started
        self.record.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.record.weights_sha256["end"] = weights_digest(self.global_state)
        self.on_round_end(self.record, self.samples, self.global_state, self.optimiser_state())
        return None

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> HybridNet-XR schedule: %d pre-warm round(s), then fine-tuning",
            self.config.prewarm_rounds,
        )
        log(
            INFO,
            "\t├──> Update checks: protocol, metrics, arrays before decoding, finite, "
            "norm <= %g x global",
            self.config.max_update_ratio,
        )
        self.inner["finetune"].summary()


def _as_record(metrics: Metrics) -> dict:
    return metrics.model_dump(by_alias=True)
