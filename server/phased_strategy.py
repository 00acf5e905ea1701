"""Flower's strategies, with what a clinical federation adds around them.

`PhasedStrategy` is itself a Flower `Strategy`, driven by `Strategy.start`. It keeps the full
global state (classifier + SimCLR projection head) and, per round:
- sends only what the round's phase trains (pre-warm: encoder + projection head; fine-tune: the
  classifier) and asks for evaluation only in fine-tuning rounds;
- checks every reply (metric keys, weight keys and shapes, finite values, norm bound) before
  Flower's FedAvg / FedProx / FedAdam / FedMedian aggregates the accepted ones;
- before evaluating, has the trained sites re-measure BatchNorm statistics for the aggregated
  weights (a `query` message) and pools them, so the global model fits its own features;
- records per-site metrics, rejections, failures and Grad-CAM samples, and commits the round
  through `RunStore` from `start`'s end-of-round hook (`evaluate_fn`).

A site that fails, or stays silent past the round timeout, loses its update for that round; the
round goes on with the others' replies, and its record names the site and the reason. A site is
named by the name it replies with, else by the name the coordinator registered its SuperNode
under (`flwr supernode register --name`), so a site that never replied is named too. Each record
also holds digests of the global weights the round started from and ended with: every round,
also across a restart, must start from where the one before ended.

Each phase has its own Flower strategy instance, because adaptive server optimisers (FedAdam)
keep moments per weight name and the phases exchange different names. Rounds are numbered
globally (`first_round` after a resume), so schedules and FedAdam's bias correction continue.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, Strategy

from client.instructions import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_METRICS,
    METRICS_KEY,
    SITE_KEY,
    STATISTICS_MESSAGE,
    STATISTICS_METRICS,
    STATISTICS_SUFFIXES,
    TRAIN_METRICS,
    WEIGHT_KEY,
    Phase,
    RoundInstructions,
    sample_side_for,
)
from client.model_state import from_record, phase_state, to_record
from client.site_config import SITE_NAME_PATTERN
from server.batchnorm_statistics import pool_statistics
from server.differential_privacy import add_differential_privacy, clipping_bound
from server.gallery import ReceivedSamples, parse_samples
from server.metric_aggregation import aggregate_metric_records
from server.run_config import FederationConfig
from server.run_store import weights_digest
from server.update_validation import UpdateRejected, check_metrics, check_update

PHASES: tuple[Phase, ...] = ("prewarm", "finetune")
# FedAdam / FedYogi / FedAdagrad state worth keeping across a restart.
OPTIMISER_SLOTS = ("m_t", "v_t")
NODE_WAIT_S = 1.0

ArrayDict = dict[str, np.ndarray]
OptimiserState = dict[str, dict[str, ArrayDict]]  # phase -> slot ("m_t") -> weight name -> array
# (round record, Grad-CAM samples per site, global weights, optimiser state) after each round.
RoundHook = Callable[[dict[str, Any], dict[str, ReceivedSamples], ArrayDict, OptimiserState], None]


def make_flower_strategy(config: FederationConfig) -> FedAvg:
    """The aggregation rule named in the run config, with NaN-aware metric averaging."""
    evaluate_nodes = config.min_nodes if config.fraction_evaluate > 0 else 0
    common: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": config.min_nodes,
        "min_evaluate_nodes": evaluate_nodes,
        "min_available_nodes": config.min_nodes,
        "train_metrics_aggr_fn": aggregate_metric_records,
        "evaluate_metrics_aggr_fn": aggregate_metric_records,
    }
    if config.strategy == "fedprox":
        return FedProx(**common, proximal_mu=config.proximal_mu)
    if config.strategy == "fedadam":
        return FedAdam(**common, eta=config.server_learning_rate, eta_l=config.learning_rate)
    if config.strategy == "fedmedian":
        return FedMedian(**common)
    return FedAvg(**common)


def _metrics(message: Message) -> dict[str, Any]:
    records = message.content.metric_records
    if list(records) != [METRICS_KEY]:
        raise UpdateRejected(f"expected one metric record '{METRICS_KEY}', got {list(records)}")
    return dict(records[METRICS_KEY])


def _weights(record: ArrayRecord) -> ArrayDict:
    """Decode a site's weights; numpy refuses pickled objects, which counts as a rejection."""
    try:
        return from_record(record)
    except (ValueError, TypeError) as error:
        raise UpdateRejected(f"unreadable weights ({error})") from None


def _site_name(message: Message) -> str | None:
    """The name a reply claims, if it is a valid site name (it becomes a folder name)."""
    record = message.content.config_records.get(SITE_KEY)
    name = record.get("name") if record is not None else None
    return name if isinstance(name, str) and re.fullmatch(SITE_NAME_PATTERN, name) else None


class PhasedStrategy(Strategy):
    """See the module docstring. `on_round_end(record, arrays, optimiser_state)` commits."""

    def __init__(
        self,
        config: FederationConfig,
        on_round_end: RoundHook,
        first_round: int = 0,
        optimiser_state: OptimiserState | None = None,
    ) -> None:
        self.config = config
        self.on_round_end = on_round_end
        self.first_round = first_round
        self.inner: dict[Phase, Strategy] = add_differential_privacy(
            {phase: make_flower_strategy(config) for phase in PHASES}, config
        )
        for phase, slots in (optimiser_state or {}).items():
            for slot, arrays in slots.items():
                setattr(self.inner[phase], slot, {k: np.array(v) for k, v in arrays.items()})
        self.global_state: dict[str, np.ndarray] = {}
        self.sent: dict[str, np.ndarray] = {}
        self.record: dict[str, Any] = {}
        self.samples: dict[str, ReceivedSamples] = {}
        self.site_of_node: dict[int, str] = {}
        self.registered_names: dict[int, str] = {}
        self.outgoing: list[Message] = []
        self.awaited: set[int] = set()
        self.trained_nodes: list[int] = []
        self.round_started = 0.0

    # -- round bookkeeping -------------------------------------------------------------------

    def _round(self, server_round: int) -> tuple[int, Phase]:
        current = self.first_round + server_round
        return current, self.config.phase(current)

    def _begin(self, current: int, phase: Phase) -> None:
        self.round_started = time.perf_counter()
        self.samples = {}
        self.record = {
            "round": current,
            "phase": phase,
            "train": {"aggregate": {}, "sites": {}},
            "evaluate": {"aggregate": {}, "sites": {}},
            "rejected": [],
            "failures": [],
            "gradcam": {},
            "statistics": [],
            "weights_sha256": {},
        }

    def _note(self, kind: str, stage: str, site: str, reason: str) -> None:
        outcome = "rejected" if kind == "rejected" else "failed"
        log(WARNING, "round %d: %s %s %s: %s", self.record["round"], site, stage, outcome, reason)
        self.record[kind].append({"site": site, "stage": stage, "reason": reason})

    def _instructions(self, current: int, phase: Phase) -> RoundInstructions:
        config = self.config
        prewarm = phase == "prewarm"
        return RoundInstructions(
            server_round=current,
            phase=phase,
            model=config.model,
            image_size=config.image_size,
            class_names=config.classes,
            local_epochs=config.prewarm_epochs if prewarm else config.local_epochs,
            learning_rate=config.prewarm_learning_rate if prewarm else config.learning_rate,
            batch_size=config.batch_size,
            seed=config.seed,
            temperature=config.temperature,
            projection_dim=config.projection_dim,
            gradcam_per_class=config.gradcam_per_class,
            gradcam_size=config.gradcam_size,
        )

    def _wait_for_nodes(self, grid: Grid) -> None:
        """Flower sizes its sample from the nodes connected *now*; wait for the minimum first."""
        connected = len(list(grid.get_node_ids()))
        if connected < self.config.min_nodes:
            log(INFO, "Waiting for %d node(s), %d connected", self.config.min_nodes, connected)
        while len(list(grid.get_node_ids())) < self.config.min_nodes:
            time.sleep(NODE_WAIT_S)

    def _note_registered_names(self, grid: Grid) -> None:
        """The SuperNode names the coordinator registered (empty in simulations)."""
        for node in grid.get_nodes():
            if re.fullmatch(SITE_NAME_PATTERN, node.name):
                self.registered_names[node.node_id] = node.name

    def _site(self, node: int) -> str:
        """A node's name in the records: the site name it replied with, else its registered
        SuperNode name, else its node ID."""
        return self.site_of_node.get(node) or self.registered_names.get(node) or f"node-{node}"

    def _sampled(self, messages: Iterable[Message]) -> list[Message]:
        self.outgoing = list(messages)
        self.awaited = {message.metadata.dst_node_id for message in self.outgoing}
        return self.outgoing

    def _senders(self, replies: list[Message]) -> list[int]:
        """The node each reply answers for. The SuperLink answers in place of a node it lost
        (missed heartbeats) under its own ID, so go by the message replied to; the grid gave
        our messages their IDs when it sent them."""
        sent_to = {
            message.metadata.message_id: message.metadata.dst_node_id
            for message in self.outgoing
            if message.metadata.message_id
        }
        return [
            sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            for reply in replies
        ]

    def _screen(
        self, replies: Iterable[Message], stage: str, expected_metrics: tuple[str, ...]
    ) -> list[tuple[str, Message, dict[str, Any]]]:
        """Replies that carry a usable, uniquely named result; the rest are recorded."""
        accepted: dict[str, tuple[Message, dict[str, Any]]] = {}
        replies = list(replies)
        senders = self._senders(replies)
        for node in sorted(self.awaited - set(senders)):
            self._note("failures", stage, self._site(node), "no reply within the round timeout")
        for node, message in zip(senders, replies, strict=True):
            if message.has_error():
                self._note("failures", stage, self._site(node), message.error.reason)
                continue
            claimed = _site_name(message)
            registered = self.registered_names.get(node)
            site = registered or claimed or self._site(node)
            try:
                # An authenticated clinic must not speak for another (its results, its folder).
                if registered is not None and claimed is not None and claimed != registered:
                    raise UpdateRejected(
                        f"claims to be site '{claimed}' but its SuperNode is registered as "
                        f"'{registered}'"
                    )
                if claimed is None or claimed in accepted:
                    raise UpdateRejected("missing, invalid or duplicate site name")
                self.site_of_node[node] = claimed
                metrics = _metrics(message)
                check_metrics(metrics, expected_metrics, len(self.config.classes))
            except UpdateRejected as error:
                self._note("rejected", stage, site, str(error))
                continue
            accepted[site] = (message, metrics)
        return [(site, *accepted[site]) for site in sorted(accepted)]

    # -- training ----------------------------------------------------------------------------

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        current, phase = self._round(server_round)
        self._begin(current, phase)
        self._wait_for_nodes(grid)
        self._note_registered_names(grid)
        # After the first round the strategy's own state is newer than `start`'s: it also holds
        # the re-estimated BatchNorm statistics.
        self.global_state = self.global_state or from_record(arrays)
        self.record["weights_sha256"]["start"] = weights_digest(self.global_state)
        self.sent = phase_state(self.global_state, phase)
        instructions = ConfigRecord(self._instructions(current, phase).to_config())
        return self._sampled(
            self.inner[phase].configure_train(current, to_record(self.sent), instructions, grid)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current, phase = self._round(server_round)
        accepted = []
        for site, message, metrics in self._screen(replies, "train", TRAIN_METRICS[phase]):
            try:
                arrays = message.content.array_records
                if list(arrays) != [ARRAYS_KEY]:
                    raise UpdateRejected(f"expected one weight record '{ARRAYS_KEY}'")
                check_update(
                    _weights(arrays[ARRAYS_KEY]),
                    self.sent,
                    self.config.max_update_ratio,
                    clipping_bound(self.config),
                )
            except UpdateRejected as error:
                self._note("rejected", "train", site, str(error))
                continue
            self.record["train"]["sites"][site] = metrics
            accepted.append(message)
        self.trained_nodes = [message.metadata.src_node_id for message in accepted]
        aggregated, metrics = self.inner[phase].aggregate_train(current, accepted)
        if metrics is not None:
            self.record["train"]["aggregate"] = dict(metrics)
        if aggregated is None:
            return None, metrics
        merged = dict(self.global_state)
        for name, array in from_record(aggregated).items():
            merged[name] = array.astype(self.global_state[name].dtype)
        self.global_state = merged
        return to_record(merged), metrics

    # -- evaluation --------------------------------------------------------------------------

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        current, phase = self._round(server_round)
        if phase == "prewarm":
            return self._sampled([])
        if self.config.recalibrate_statistics:
            self._recalibrate(current, grid)
        classifier = phase_state(self.global_state, "finetune")
        instructions = ConfigRecord(self._instructions(current, "finetune").to_config())
        return self._sampled(
            self.inner[phase].configure_evaluate(current, to_record(classifier), instructions, grid)
        )

    def _recalibrate(self, current: int, grid: Grid) -> None:
        """Ask this round's trained sites for BatchNorm statistics of the aggregated weights and
        pool them into the global state (see `server.batchnorm_statistics`)."""
        sent = phase_state(self.global_state, "finetune")
        reference = {name: a for name, a in sent.items() if name.endswith(STATISTICS_SUFFIXES)}
        if not reference or not self.trained_nodes:
            return
        content = RecordDict(
            {
                ARRAYS_KEY: to_record(sent),
                CONFIG_KEY: ConfigRecord(self._instructions(current, "finetune").to_config()),
            }
        )
        messages = [
            Message(content, dst_node_id=node, message_type=STATISTICS_MESSAGE)
            for node in self.trained_nodes
        ]
        replies = grid.send_and_receive(self._sampled(messages), timeout=self.config.round_timeout)
        measured = []
        for site, message, metrics in self._screen(replies, "statistics", STATISTICS_METRICS):
            try:
                arrays = message.content.array_records
                if list(arrays) != [ARRAYS_KEY]:
                    raise UpdateRejected(f"expected one statistics record '{ARRAYS_KEY}'")
                statistics = _weights(arrays[ARRAYS_KEY])
                check_update(statistics, reference, self.config.max_update_ratio)
            except UpdateRejected as error:
                self._note("rejected", "statistics", site, str(error))
                continue
            measured.append((statistics, int(metrics[WEIGHT_KEY])))
            self.record["statistics"].append(site)
        if measured:
            self.global_state = {**self.global_state, **pool_statistics(measured)}

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        current, phase = self._round(server_round)
        accepted = []
        config = self.config
        for site, message, metrics in self._screen(replies, "evaluate", EVALUATE_METRICS):
            self.record["evaluate"]["sites"][site] = metrics
            accepted.append(message)
            try:
                samples = parse_samples(
                    message.content,
                    len(config.classes),
                    config.gradcam_per_class,
                    sample_side_for(config.gradcam_size, config.image_size),
                )
            except ValueError as error:
                log(WARNING, "round %d: %s Grad-CAM samples ignored: %s", current, site, error)
                continue
            if samples is not None:
                self.samples[site] = samples
        metrics = self.inner[phase].aggregate_evaluate(current, accepted)
        if metrics is not None:
            self.record["evaluate"]["aggregate"] = dict(metrics)
        return metrics

    # -- end of round ------------------------------------------------------------------------

    def optimiser_state(self) -> OptimiserState:
        """FedAdam's moments per phase (empty for stateless rules), for `server_state.pt`."""
        state: OptimiserState = {}
        for phase, strategy in self.inner.items():
            slots = {slot: getattr(strategy, slot, None) for slot in OPTIMISER_SLOTS}
            kept = {slot: dict(value) for slot, value in slots.items() if value}
            if kept:
                state[phase] = kept
        return state

    def end_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """`Strategy.start`'s `evaluate_fn`: called once per round after evaluation (and once
        before round 1, which has nothing to commit)."""
        if server_round == 0:
            return None
        self.record["seconds"] = time.perf_counter() - self.round_started
        self.record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.record["weights_sha256"]["end"] = weights_digest(self.global_state)
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
            "\t├──> Update checks: keys, shapes, finite, norm <= %g x global",
            self.config.max_update_ratio,
        )
        self.inner["finetune"].summary()
