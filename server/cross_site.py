"""The opt-in cross-site round after the federated rounds, as in NVFlare's cross-site validation.

Up to 20 clinics, sampled by the run's seed beyond that, are asked for a model trained on their
own images alone from the run's initial weights (a clinic whose site config does not share it
refuses). Every accepted local model and the global model then go to every sampled clinic,
which scores each on its test share: rows are models, columns are the clinics' test shares,
the shape of the simulation's matrix (`summary.json` `cross_site`). Each reply is screened as
in the federated rounds; a clinic that refuses, fails or sends something unusable is named
with the reason, and the round goes on without that model or cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from protocol.arrays import decode_checked, specs_of, to_record
from protocol.instructions import (
    MAX_CROSS_SITE_CLINICS,
    CrossSiteInstructions,
    LocalModelInstructions,
)
from protocol.records import ARRAYS_KEY, CONFIG_KEY, EVALUATE_MODEL_MESSAGE, LOCAL_MODEL_MESSAGE
from protocol.replies import EvaluateMetrics, FinetuneMetrics, ReplyRejected
from protocol.schedule import phase_state
from server.reply_screening import ReplyScreen, Screened, rejection_reason
from server.round_record import Stage
from server.run_config import FederationConfig
from server.update_validation import check_update

ArrayDict = dict[str, np.ndarray]
FEDERATED = "federated"


def local_name(site: str) -> str:
    """A clinic's local-only model, as the matrix names it."""
    return f"{site} alone"


def sampled_clinics(num_clinics: int, seed: int) -> list[int]:
    """Which of `num_clinics` (by position) enter the matrix: all up to MAX_CROSS_SITE_CLINICS,
    beyond that a seeded sample, so 1,000 clinics cost 20 local models, not 1,000, and the
    matrix stays 21 x 20."""
    if num_clinics <= MAX_CROSS_SITE_CLINICS:
        return list(range(num_clinics))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(num_clinics, MAX_CROSS_SITE_CLINICS, replace=False)
    return sorted(int(k) for k in chosen)


def cross_site_instructions(config: FederationConfig, models: int) -> dict[str, Any]:
    """The settings both cross-site messages carry: the run's fine-tuning settings at the
    phase's first-round rate, `models` declared, nothing beyond metrics asked."""
    finetune = config.round_instructions(config.num_server_rounds, "finetune")
    return finetune.model_dump() | {
        "learning_rate": config.learning_rate,
        "gradcam_per_class": 0,
        "personalise_epochs": 0,
        "cross_site_models": models,
    }


class CrossSiteRound:
    """One cross-site round over `nodes`: it asks for their local models, and for the scores of
    one model at every node."""

    def __init__(self, grid: Grid, config: FederationConfig, nodes: Sequence[int]) -> None:
        self.grid = grid
        self.config = config
        self.nodes = list(nodes)
        self.screen = ReplyScreen(len(config.classes), self._note)
        self.screen.note_registered_names(grid)
        # The model the current evaluations score, for their incidents (None: local models).
        self.model: str | None = None
        self.incidents: list[dict[str, str]] = []
        settings = cross_site_instructions(config, len(self.nodes) + 1)
        self.evaluate_config = ConfigRecord(CrossSiteInstructions(**settings).to_config())
        self.local_config = ConfigRecord(
            LocalModelInstructions(
                **settings,
                prewarm_rounds=config.prewarm_rounds,
                prewarm_epochs=config.prewarm_epochs,
                prewarm_learning_rate=config.prewarm_learning_rate,
            ).to_config()
        )

    def _note(self, kind: str, stage: Stage, site: str, reason: str) -> None:
        outcome = "rejected" if kind == "rejected" else "failed"
        model = self.model or local_name(site)
        log(WARNING, "cross-site: %s %s of %s %s: %s", site, stage, model, outcome, reason)
        self.incidents.append(
            {"site": site, "stage": stage, "model": model, "outcome": outcome, "reason": reason}
        )

    def _ask(
        self,
        arrays: ArrayDict,
        config: ConfigRecord,
        message_type: str,
        timeout: float,
    ) -> list[Message]:
        content = RecordDict({ARRAYS_KEY: to_record(arrays), CONFIG_KEY: config})
        messages = [
            Message(content, dst_node_id=node, message_type=message_type) for node in self.nodes
        ]
        return list(self.grid.send_and_receive(self.screen.sent(messages), timeout=timeout))

    def _checked_model(self, screened: Screened, initial: ArrayDict) -> ArrayDict:
        """The reply's weights, exactly the classifier's names, dtypes and shapes, all finite.
        Trained alone for the whole run, a model may move far from its start: no norm bound."""
        arrays = screened.message.content.array_records
        if list(arrays) != [ARRAYS_KEY]:
            raise ReplyRejected(f"expected one weight record '{ARRAYS_KEY}'")
        weights = decode_checked(arrays[ARRAYS_KEY], specs_of(initial))
        check_update(weights, initial, max_update_ratio=math.inf)
        return weights

    def local_models(
        self, initial: ArrayDict
    ) -> tuple[dict[str, ArrayDict], dict[str, dict[str, Any]]]:
        """(weights, validation metrics) of every clinic that shared a usable local model."""
        self.model = None
        # The local model trains the whole run's epochs in one message.
        timeout = self.config.round_timeout * self.config.num_server_rounds
        replies = self._ask(initial, self.local_config, LOCAL_MODEL_MESSAGE, timeout)
        weights: dict[str, ArrayDict] = {}
        metrics: dict[str, dict[str, Any]] = {}
        for screened in self.screen.screen(replies, "train", FinetuneMetrics):
            try:
                weights[screened.site] = self._checked_model(screened, initial)
            except Exception as error:
                self._note("rejected", "train", screened.site, rejection_reason(error))
                continue
            metrics[screened.site] = screened.metrics.model_dump(by_alias=True)
            log(INFO, "cross-site: %s shared its local model", screened.site)
        return weights, metrics

    def scores(self, name: str, weights: ArrayDict) -> dict[str, dict[str, Any]]:
        """`weights` scored at every node that answered usably, by site."""
        self.model = name
        replies = self._ask(
            weights, self.evaluate_config, EVALUATE_MODEL_MESSAGE, self.config.round_timeout
        )
        return {
            screened.site: screened.metrics.model_dump(by_alias=True)
            for screened in self.screen.screen(replies, "evaluate", EvaluateMetrics)
        }


def cross_site_matrix(
    grid: Grid, config: FederationConfig, global_state: ArrayDict, initial: ArrayDict
) -> dict[str, Any]:
    """Run the cross-site round; the matrix (None where a cell has no result), the sampled
    clinics' own validation scores of their local models, and every incident."""
    nodes = sorted(grid.get_node_ids())
    sampled = [nodes[k] for k in sampled_clinics(len(nodes), config.seed)]
    log(INFO, "cross-site: %d of %d clinic(s) sampled", len(sampled), len(nodes))
    round_ = CrossSiteRound(grid, config, sampled)
    # The global model first: its replies name every clinic that answers, also in a resumed run.
    cells = {FEDERATED: round_.scores(FEDERATED, phase_state(global_state, "finetune"))}
    local, validation = round_.local_models(phase_state(initial, "finetune"))
    for site, weights in sorted(local.items()):
        cells[local_name(site)] = round_.scores(local_name(site), weights)
    shares = sorted({round_.screen.site(node) for node in sampled})
    return {
        "shares": shares,
        "models": {name: {site: row.get(site) for site in shares} for name, row in cells.items()},
        "local_validation": validation,
        "clinics": len(nodes),
        "incidents": round_.incidents,
    }
