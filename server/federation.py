"""A whole federated run on the server side: start or resume, commit each round, write results.

Called by the ServerApp with Flower's `Grid`; knows nothing of how nodes are run, so deployment
and simulation share it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log
from flwr.serverapp import Grid

from hxr_model.checkpoint import save_checkpoint
from hxr_model.errors import ConfigError
from hxr_model.models import build_model
from hxr_model.prewarm import ProjectionHead
from protocol.arrays import to_record
from protocol.gradcam_samples import GradcamSamples
from protocol.model_state import federated_state, float_state
from server.cross_site import cross_site_matrix
from server.gallery import save_gallery
from server.label_prior import pooled_label_share
from server.model_selection import classifier_from, served_model, served_threshold
from server.optimiser_state import OptimiserState
from server.phased_strategy import PhasedStrategy
from server.report import write_report
from server.round_record import GallerySample, RoundRecord
from server.run_config import FederationConfig
from server.run_store import ResumeState, RunStore
from server.summary import write_summary

# Settings a resumed run must share with the run it continues (data: simulations only).
FINGERPRINT_FIELDS = (
    "model",
    "classes",
    "image_size",
    "projection_dim",
    "prewarm_rounds",
    "strategy",
    "seed",
    "data",
    "partition",
    # A resumed run's epsilon adds up the earlier rounds' releases: their noise must match.
    "dp_noise_multiplier",
    "dp_clipping_norm",
)


def fingerprint(config: FederationConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", include=set(FINGERPRINT_FIELDS))


def initial_state(config: FederationConfig) -> dict[str, np.ndarray]:
    """Seeded fresh weights: the same seed gives every run the same starting point."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = build_model(config.model, len(config.classes))
        projection = ProjectionHead(model.feature_dim, config.projection_dim)
    return federated_state(model, projection)


def describe_round(record: RoundRecord, total_rounds: int) -> list[str]:
    """Progress lines: one per site, then the federation's numbers."""
    lines = []

    def number(values: Mapping[str, Any], key: str) -> str:
        value = values.get(key)
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"

    evaluated = record.evaluate.sites
    for site, train in sorted(record.train.sites.items()):
        text = (
            f"round {record.round}/{total_rounds} {record.phase:<8} {site}: "
            f"loss {number(train, 'train-loss')}"
        )
        if site in evaluated:
            text += (
                f", test acc {number(evaluated[site], 'accuracy')}"
                f" bal-acc {number(evaluated[site], 'balanced-accuracy')}"
            )
        text += f", {train['seconds']:.1f} s, {train['peak-memory-mb']:.0f} MB"
        lines.append(text)
    aggregate = record.evaluate.aggregate
    summary = (
        f"round {record.round}/{total_rounds} {record.phase} done in {record.seconds:.1f} s: "
        f"{len(record.train.sites)} clinic(s) trained, loss "
        f"{number(record.train.aggregate, 'train-loss')}"
    )
    if aggregate:
        summary += (
            f", federation test acc {number(aggregate, 'accuracy')}"
            f" bal-acc {number(aggregate, 'balanced-accuracy')} auc {number(aggregate, 'auc')}"
        )
    if record.rejected or record.failures:
        summary += f" ({len(record.rejected)} rejected, {len(record.failures)} failed)"
    lines.append(summary)
    return lines


class RoundCommitter:
    """`PhasedStrategy`'s end-of-round hook: gallery, records, checkpoint, then commit."""

    def __init__(self, config: FederationConfig, store: RunStore) -> None:
        self.config = config
        self.store = store

    def __call__(
        self,
        record: RoundRecord,
        samples: Mapping[str, GradcamSamples],
        arrays: dict[str, np.ndarray],
        optimiser_state: OptimiserState,
    ) -> None:
        self.record_round(record, samples)
        self.commit(record, arrays, optimiser_state)

    def record_round(self, record: RoundRecord, samples: Mapping[str, GradcamSamples]) -> None:
        """Gallery PNGs, then rounds.jsonl and the per-site CSVs (not yet a commit)."""
        config, store = self.config, self.store
        for site, site_samples in sorted(samples.items()):
            paths = save_gallery(
                store.gradcam_dir, record.round, site, site_samples, config.classes
            )
            record.gradcam[site] = [
                GallerySample(
                    file=str(path.relative_to(store.run_dir)),
                    true=config.classes[label],
                    predicted=config.classes[predicted],
                )
                for path, label, predicted in zip(
                    paths, site_samples.labels, site_samples.predictions, strict=True
                )
            ]
        store.append_round(record, config.classes)

    def commit(
        self,
        record: RoundRecord,
        arrays: dict[str, np.ndarray],
        optimiser_state: OptimiserState,
    ) -> None:
        """The round's global checkpoint, then the resume state: from here it is completed."""
        config, store, current = self.config, self.store, record.round
        save_checkpoint(
            store.round_checkpoint(current),
            classifier_from(config, arrays),
            model_name=config.model,
            class_names=config.classes,
            image_size=config.image_size,
            metadata={"federation_round": current, "phase": record.phase},
        )
        store.save_state(ResumeState(current, arrays, optimiser_state, fingerprint(config)))
        for line in describe_round(record, config.num_server_rounds):
            log(INFO, "%s", line)


def _resume_point(config: FederationConfig, store: RunStore) -> ResumeState | None:
    if not config.resume:
        if store.has_results():
            raise ConfigError(
                f"{store.run_dir} already holds a run; set resume=true to continue it "
                f"or choose another out-dir"
            )
        return None
    state = store.load_state()
    if state is None:
        store.discard_after(0, config.classes)
        return None
    expected = fingerprint(config)
    for key, value in expected.items():
        if state.fingerprint.get(key) != value:
            raise ConfigError(
                f"cannot resume {store.run_dir}: it was started with {key}="
                f"{state.fingerprint.get(key)!r}, this run has {key}={value!r}"
            )
    store.discard_after(state.round, config.classes)
    return state


def run_federation(grid: Grid, config: FederationConfig, run_id: int) -> Path:
    """Run (or continue) the configured rounds, then write the final model, the cross-site
    matrix where the run config asks for it, and the reports."""
    store = RunStore(config.run_dir(run_id))
    with store.locked():
        _run(grid, config, store)
    log(INFO, "Federated run finished: %s", store.run_dir)
    return store.run_dir


def _run(grid: Grid, config: FederationConfig, store: RunStore) -> None:
    resumed = _resume_point(config, store)
    first_round = resumed.round if resumed else 0
    arrays = resumed.arrays if resumed else initial_state(config)
    if resumed:
        log(INFO, "Resuming %s after round %d", store.run_dir, first_round)
    strategy = PhasedStrategy(
        config,
        RoundCommitter(config, store),
        first_round=first_round,
        optimiser_state=resumed.strategy if resumed else None,
        class_prior=pooled_label_share(store.read_rounds(), len(config.classes)) if resumed else (),
    )
    remaining = config.num_server_rounds - first_round
    if remaining > 0:
        strategy.start(
            grid,
            to_record(arrays),
            num_rounds=remaining,
            timeout=config.round_timeout,
            evaluate_fn=strategy.end_round,
        )
    final = store.load_state()
    if final is None:
        raise ConfigError(f"{store.run_dir}: no round completed, nothing to save")
    records = store.read_rounds()
    model, served_round = served_model(store, config)
    save_checkpoint(
        store.run_dir / "global_model.pt",
        model,
        model_name=config.model,
        class_names=config.classes,
        image_size=config.image_size,
        threshold=served_threshold(records, config),
        metadata={
            "federation": config.model_dump(mode="json"),
            "rounds": final.round,
            "served_round": served_round,
        },
    )
    extra = {}
    if config.cross_site_local_models:
        strategy.wait_for_nodes(grid)  # a resumed, completed run has not waited for them yet
        # The served round's model, the one the summary and global_model.pt carry.
        served = float_state(model)
        extra["cross_site"] = cross_site_matrix(grid, config, served, initial_state(config))
    summary = write_summary(store, config, records, extra)
    write_report(store, config, records, summary)
