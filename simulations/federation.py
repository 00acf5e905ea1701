"""A federation of virtual clinics on one machine, through Flower's simulation engine.

The same ServerApp and ClientApp as in deployment run in-process via
`flwr.simulation.run_simulation`: no local SuperLink is started (so nothing keeps running after
the call), and no runtime environment is built (so nothing is downloaded). Each virtual clinic
is one partition of a dataset, played by a Ray actor limited to one CPU core, on a Ray instance
of this process or on an existing cluster (`ray_address`).

Flower 1.42 marks this entry point deprecated in favour of `flwr run` against a local SuperLink,
which works for our app (docs/benchmarks.md: 1.1-1.5x the wall time of a tiny job, and it leaves
its SuperLink running). This module stays the one thin adapter to Flower's simulation engine
until `hxr simulate` starts and stops such a SuperLink itself: studies hand it Python objects no
run config carries (a hostile clinic's own ClientApp in the label-flip and hostile-federation
studies, the per-clinic label maps), and it owns no process that could outlive the run.
`CalmTerminal` keeps Flower's notice off the user's terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator
from tqdm import tqdm

from client.site_config import PrivacyPolicy
from hxr_model.data import DataSplits, load_splits, partition
from server.run_config import FederationConfig, FederationSettings

if TYPE_CHECKING:
    from client.client_app import SimulatedSites

# Flower's and Ray's usage reporting would try the network from every clinic laptop; a
# simulation must also never build a fresh environment (`flwr run`'s default downloads torch).
FLOWER_LOGGER = "flwr"
QUIET_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray's notice about a future change to GPU visibility; actors reserve no GPU unless asked.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


class SimulationSettings(FederationSettings):
    """`hxr simulate`: the federation's settings (defaults: the README demo, under five minutes
    on two CPU cores) plus what only virtual clinics on one machine need."""

    sites: int = Field(4, ge=1, le=1000, description="number of virtual clinics")
    privacy: PrivacyPolicy = Field("heatmap", description="what Grad-CAM samples clinics share")
    skip_bad: bool = Field(False, description="leave unreadable files out")
    label_map: dict[str, str] = Field(
        default_factory=dict, description="source label -> class, at every clinic"
    )
    site_label_maps: dict[int, dict[str, str]] = Field(
        default_factory=dict,
        description="per clinic (numbered from 1), a label map replacing `label_map` there",
    )
    out: Path = Field(description="run folder")
    resume: bool = Field(False, description="continue the run in --out after its last round")
    cpus: int | None = Field(None, ge=1, description="CPU cores for the virtual clinics")
    ray_address: str | None = Field(
        None,
        min_length=1,
        description="run the clinics on an existing Ray cluster (the address `ray start --head` "
        "prints); every node needs this environment and the data at the same path",
    )
    verbose: bool = Field(
        False, description="show Flower's and Ray's own log lines and every clinic's progress"
    )
    local_baselines: bool = Field(
        True,
        description="also train each clinic alone (same budget) and compare every model on the "
        "pooled test split and on every clinic's share",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="torch device")

    @model_validator(mode="after")
    def _one_engine(self) -> SimulationSettings:
        if self.ray_address and self.cpus:
            raise ValueError(
                "--cpus sizes a local Ray instance; a cluster (--ray-address) has its own"
            )
        return self


def federation_config(settings: SimulationSettings, class_names: list[str]) -> FederationConfig:
    """The run config of a simulation: its settings, plus what it derives (see
    `server.run_config.SIMULATION_DERIVED`)."""
    return FederationConfig(
        **settings.model_dump(include=set(FederationSettings.model_fields)),
        classes=class_names,
        min_nodes=settings.sites,
        out_dir=str(settings.out),
        resume=settings.resume,
    )


def backend_config(settings: SimulationSettings) -> dict:
    """One core per virtual clinic, at most as many clinics at once as the machine has cores.

    Ray hides GPUs from actors that reserve none, so with a GPU the clinics running at the same
    time share it in equal fractions. On an existing cluster (`ray_address`) the cluster's own
    resources decide how many clinics run at once, one per free core; with `--device cuda` each
    reserves a whole GPU.
    """
    if settings.ray_address:
        return {
            "client_resources": {
                "num_cpus": 1,
                "num_gpus": 1.0 if settings.device == "cuda" else 0,
            },
            "init_args": {"address": settings.ray_address, "log_to_driver": settings.verbose},
        }
    cpus = settings.cpus or max(1, min(settings.sites, len(os.sched_getaffinity(0))))
    gpus = torch.cuda.device_count() if settings.device != "cpu" else 0
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": min(1.0, gpus / cpus) if gpus else 0.0},
        "init_args": {
            # A fresh instance of our own, even where `ray start` left a cluster on this machine
            # (Ray would join it, or fail on a stale address it recorded).
            "address": "local",
            "num_cpus": cpus,
            "num_gpus": gpus,
            "include_dashboard": False,
            # The clinics' own log lines reach the terminal only when asked for.
            "log_to_driver": settings.verbose,
        },
    }


def load_settings_splits(settings: SimulationSettings) -> DataSplits:
    """The whole dataset as every clinic's label map names it (classes in federation order)."""
    return load_splits(
        settings.data,
        settings.image_size,
        skip_bad=settings.skip_bad,
        seed=settings.seed,
        label_map=settings.label_map or None,
        carve_missing_test=True,
    )


def quiet_flower() -> None:
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def simulated_sites(settings: SimulationSettings) -> SimulatedSites:
    """The virtual clinics' site configs (imports Flower, quietly)."""
    quiet_flower()
    from client.client_app import SimulatedSites

    shared = settings.model_dump(include={"privacy", "device", "skip_bad"})
    return SimulatedSites(
        settings.data,
        settings.partition,
        settings.seed,
        shared=shared,
        label_map=settings.label_map,
        site_label_maps=settings.site_label_maps,
    )


def check_partitions(settings: SimulationSettings) -> list[str]:
    """Load the data and partition every split here first: a scheme that leaves a clinic empty
    fails in one line before any actor starts. Returns the class names."""
    splits = load_settings_splits(settings)
    for split in (splits.train, splits.val, splits.test):
        if split is not None:
            partition(split, settings.partition, settings.sites, settings.seed)
    return splits.class_names


class CalmTerminal(logging.Filter):
    """Flower's log, as a researcher watching a simulation wants it: one line per round and
    every warning (a rejected or failed clinic), without Flower's per-message chatter, raw
    metric dictionaries or the notice that in-process simulation is deprecated (this module
    keeps it on purpose: it starts no SuperLink that could outlive the run and downloads
    nothing). `verbose` shows everything."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return not message.startswith("DEPRECATED FEATURE")
        return message.startswith("round ") and " done in " in message


class ReplyProgress:
    """A live line on a terminal, `clinics 7/10`, while a stage's replies come in; it clears
    itself when the last one is in (the round's own line follows). Nothing where the output is
    not a terminal (logs, pipes, tests) or with --verbose, where every clinic logs its own."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def __call__(self, received: int, sent: int) -> None:
        if not self.enabled:
            return
        if self.bar is None or self.bar.total != sent or received < self.bar.n:
            self.close()
            # Replies arrive at most every poll of the grid: redraw on each.
            self.bar = tqdm(
                total=sent,
                desc="clinics",
                leave=False,
                file=sys.stderr,
                mininterval=0,
                bar_format="{desc} {n}/{total} |{bar}| {elapsed}",
            )
        self.bar.update(received - self.bar.n)
        if received >= sent:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def simulate(settings: SimulationSettings) -> Path:
    """Run the federation; returns the run directory (global_model.pt, summary.json, ...)."""
    quiet_flower()
    # Imported late: Flower reads the variables above when it is first imported.
    import ray
    from flwr.simulation import run_simulation

    from client.client_app import build_client_app
    from server.server_app import build_server_app

    class_names = check_partitions(settings)
    config = federation_config(settings, class_names)
    sites = simulated_sites(settings)
    stop = threading.Event()
    progress = ReplyProgress(not settings.verbose and sys.stderr.isatty())
    calm = CalmTerminal(settings.verbose)
    logging.getLogger(FLOWER_LOGGER).addFilter(calm)
    try:
        run_simulation(
            server_app=build_server_app(config, stop, progress),
            client_app=build_client_app(sites),
            num_supernodes=settings.sites,
            backend_config=backend_config(settings),
        )
    finally:
        stop.set()  # an interrupted run's ServerApp thread would otherwise wait for replies
        progress.close()
        if ray.is_initialized():
            ray.shutdown()
        logging.getLogger(FLOWER_LOGGER).removeFilter(calm)
    return config.run_dir(0)
