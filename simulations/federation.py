"""A federation of virtual clinics on one machine (or a Ray cluster), through Flower's
simulation runtime.

`simulate` starts a local SuperLink in simulation mode (`simulations.local_superlink`) and
submits the project's Flower app to it with `flwr run`: the same ServerApp and ClientApp as in
deployment, every setting in the run config (what each virtual clinic's site config says
included), one virtual SuperNode per clinic, each clinic's ClientApp on a Ray actor limited to one
CPU core. Nothing is installed (runtime dependency installation is off) and the SuperLink ends
with the call. The run's log streams back: the terminal shows a line per round, a live
`clinics 7/10` line and every warning, and the whole log is kept in the run folder.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch
from pydantic import Field, model_validator
from tqdm import tqdm

from client.site_config import (
    NUM_PARTITIONS_KEY,
    PARTITION_ID_KEY,
    SiteConfig,
    site_from_node_config,
)
from hxr_model.data import DataSplits, load_splits, partition
from hxr_model.errors import ConfigError
from server.reply_progress import REPLIES_PATTERN
from server.run_config import FederationConfig, FederationSettings
from server.run_store import RunStore
from simulations.local_superlink import LocalSuperLink, SimulationError

# The Flower app `hxr simulate` runs: this project, as `flwr run .` packs it.
PROJECT_APP = Path(__file__).resolve().parents[1]
# Flower's and Ray's usage reporting would try the network from every clinic laptop; a
# simulation must also never build a fresh environment (`flwr run`'s default downloads torch).
QUIET_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray's notice about a future change to GPU visibility; actors reserve no GPU unless asked.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
# What the run's streamed log says, line by line: `LEVEL :   message`.
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s*:\s*(.*)$")
# Flower's notices that say nothing about this run (it sets the SuperNode count itself).
FLOWER_NOTICES = ("Since flwr 1.32, default simulated SuperNodes",)


class SimulationSettings(FederationSettings):
    """`hxr simulate`: the federation's settings (defaults: the README demo, under five minutes
    on two CPU cores) plus what only virtual clinics on one machine need."""

    sites: int = Field(4, ge=1, le=1000, description="number of virtual clinics")
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
        out_dir=str(settings.out.resolve()),
        resume=settings.resume,
    )


def runtime_options(settings: SimulationSettings) -> tuple[dict, dict[str, str]]:
    """Flower's federation config (SuperNodes, Ray's resources) and the environment the
    simulation runtime starts in.

    One core per virtual clinic, at most as many clinics at once as the machine has cores. Ray
    hides GPUs from actors that reserve none, so with a GPU the clinics running at the same time
    share it in equal fractions. On an existing cluster (`ray_address`, which Ray reads from
    RAY_ADDRESS: Flower's federation config carries no address) the cluster's own resources
    decide how many clinics run at once, one per free core; with `--device cuda` each reserves a
    whole GPU. Elsewhere RAY_ADDRESS=local starts a fresh Ray instance even where `ray start`
    left a cluster on this machine (Ray would join it, or fail on a stale address it recorded).
    """
    options: dict = {
        "num-supernodes": settings.sites,
        "client-resources-num-cpus": 1,
        # The clinics' own log lines reach the terminal only when asked for.
        "init-args-log-to-driver": settings.verbose,
    }
    if settings.ray_address:
        options["client-resources-num-gpus"] = 1.0 if settings.device == "cuda" else 0.0
        return options, {"RAY_ADDRESS": settings.ray_address}
    cpus = settings.cpus or max(1, min(settings.sites, len(os.sched_getaffinity(0))))
    gpus = torch.cuda.device_count() if settings.device != "cpu" else 0
    options["client-resources-num-gpus"] = min(1.0, gpus / cpus) if gpus else 0.0
    options |= {"init-args-num-cpus": cpus, "init-args-num-gpus": gpus}
    return options, {"RAY_ADDRESS": "local"}


def clinic_site(settings: SimulationSettings, index: int) -> SiteConfig:
    """Virtual clinic `index` as its ClientApp resolves it, from the same run-config values."""
    shared = FederationSettings(**settings.model_dump(include=set(FederationSettings.model_fields)))
    node = {PARTITION_ID_KEY: index, NUM_PARTITIONS_KEY: settings.sites}
    return site_from_node_config(node, shared.run_config_values())


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


def check_partitions(settings: SimulationSettings) -> list[str]:
    """Load the data and partition every split here first: a scheme that leaves a clinic empty
    fails in one line before any actor starts. Returns the class names."""
    splits = load_settings_splits(settings)
    for split in (splits.train, splits.val, splits.test):
        if split is not None:
            partition(split, settings.partition, settings.sites, settings.seed)
    return splits.class_names


class TerminalLines:
    """The run's streamed log, as a researcher watching a simulation wants it: one line per
    round and every warning (a rejected or failed clinic), without Flower's per-message chatter
    or raw metric dictionaries; a stage's reply counts drive `progress`. `verbose` shows every
    line. Every line is also written to `log_path`, and the run's errors are kept for the
    message that ends a failed run."""

    def __init__(self, verbose: bool, progress: ReplyProgress, log_path: Path) -> None:
        self.verbose = verbose
        self.progress = progress
        self.log = log_path.open("a", encoding="utf-8")
        self.errors: list[str] = []

    def __call__(self, line: str) -> None:
        self.log.write(line + "\n")
        parsed = LOG_LINE.match(line)
        level, message = parsed.groups() if parsed else ("", line)
        if level in ("ERROR", "CRITICAL"):
            self.errors.append(message)
        if self.verbose:
            print(line, file=sys.stderr, flush=True)
        elif counts := REPLIES_PATTERN.match(message):
            self.progress(int(counts.group(1)), int(counts.group(2)))
        elif self._shown(level, message):
            print(message, file=sys.stderr, flush=True)

    @staticmethod
    def _shown(level: str, message: str) -> bool:
        if level in ("WARNING", "ERROR", "CRITICAL"):
            return not message.startswith(FLOWER_NOTICES)
        return level == "INFO" and message.startswith("round ") and " done in " in message

    def close(self) -> None:
        self.log.close()


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


def simulate(settings: SimulationSettings, app_dir: Path = PROJECT_APP) -> Path:
    """Run the federation (the Flower app in `app_dir`: this project unless a study brings its
    own); returns the run directory (global_model.pt, summary.json, flower.log, ...)."""
    if not (app_dir / "pyproject.toml").is_file():
        raise ConfigError(
            f"no Flower app in {app_dir}: `hxr simulate` packs the project's source folder, so "
            "install it from a clone with `pip install -e .`"
        )
    class_names = check_partitions(settings)
    config = federation_config(settings, class_names)
    run_dir = Path(config.out_dir)
    if not settings.resume and RunStore(run_dir).has_results():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume")
    options, ray_environment = runtime_options(settings)
    environment = {**os.environ, **QUIET_ENVIRONMENT, **ray_environment}
    progress = ReplyProgress(not settings.verbose and sys.stderr.isatty())
    run_dir.mkdir(parents=True, exist_ok=True)
    terminal = TerminalLines(settings.verbose, progress, run_dir / "flower.log")
    try:
        with LocalSuperLink(environment, run_dir / "superlink.log") as superlink:
            superlink.run(app_dir, config.run_config_values(), options, terminal)
    except SimulationError as error:
        last_error = f": {terminal.errors[-1]}" if terminal.errors else ""
        log = run_dir / "flower.log"
        raise SimulationError(f"{error}{last_error} (the run's log: {log})") from None
    finally:
        progress.close()
        terminal.close()
    return run_dir
