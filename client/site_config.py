"""A clinic's site configuration: what its SuperNode is told about local data and policy.

The SuperNode's node config either points at a site TOML file (`site-config="site.toml"`) or
carries the same settings as key-values (`site-name="north" data="folder:/data/xr"`). In Flower's
simulation engine a node knows only its partition number, so the site is then a partition of the
run's `data` reference instead, with the settings the run config gives every virtual clinic.
Every path ends in the same pydantic model, and a bad value stops the client with one line
naming the field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hxr_model.data.label_map import parse_label_map, parse_site_label_maps
from hxr_model.data.refs import anchor_ref
from hxr_model.errors import ConfigError, describe_validation_error
from protocol.records import PrivacyPolicy
from protocol.site_names import SITE_NAME_PATTERN

SITE_CONFIG_KEY = "site-config"
PARTITION_ID_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"


class SitePartition(BaseModel):
    """A simulated clinic: part `index` of `num_sites` of a shared dataset (simulation only)."""

    model_config = ConfigDict(extra="forbid")

    scheme: str = Field(min_length=1)
    num_sites: int = Field(ge=1)
    index: int = Field(ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _index_is_a_site(self) -> SitePartition:
        if self.index >= self.num_sites:
            raise ValueError(f"index {self.index} is not below num_sites {self.num_sites}")
        return self


class SiteConfig(BaseModel):
    """Everything a clinic decides for itself; the server never sees the data reference.

    What the clinic discloses is the clinic's to fix, whatever its coordinator asks: the split
    of its images (`split_seed`, else drawn once and kept in `state_dir`), so the same images are
    held out in every run, the number and side of the Grad-CAM samples it shares, and whether a
    model trained on its images alone may leave it (`share_local_model`, for the cross-site
    matrix: a disclosure, see docs/security.md).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SITE_NAME_PATTERN)
    data: str = Field(min_length=1)
    label_map: dict[str, str] = Field(default_factory=dict)
    privacy: PrivacyPolicy = "heatmap"
    device: str = "auto"
    max_memory_mb: float | None = Field(None, gt=0)
    skip_bad: bool = False
    partition: SitePartition | None = None
    split_seed: int | None = Field(None, ge=0)
    state_dir: Path | None = None
    gradcam_max_per_class: int = Field(2, ge=0, le=16)
    gradcam_max_side: int = Field(32, ge=8, le=128)
    # A local model is fitted to this clinic's images only; sent out, every clinic scores it.
    share_local_model: bool = False


def validate_site_config(values: Mapping[str, Any], source: str) -> SiteConfig:
    """Validate raw settings; `source` names where they came from in the error message."""
    try:
        return SiteConfig.model_validate(dict(values))
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe_validation_error(error)}") from None


def load_site_config(path: Path) -> SiteConfig:
    """Read and validate a site TOML file; a relative data path is read from the file's folder."""
    try:
        path = path.expanduser()
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"site config {path} does not exist") from None
    # ValueError: undecodable text, bad TOML, a NUL in the path; RuntimeError: `~user` with no
    # such user, and tomllib's RecursionError on absurdly deep nesting.
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"site config {path} is not readable TOML: {error}") from None
    site = validate_site_config(values, str(path))
    folder = path.resolve().parent
    anchored: dict[str, Any] = {"data": anchor_ref(site.data, folder)}
    if site.state_dir is not None:
        anchored["state_dir"] = folder / site.state_dir.expanduser()
    return site.model_copy(update=anchored)


def _from_key_values(node_config: Mapping[str, Any]) -> SiteConfig:
    values: dict[str, Any] = {
        key.replace("-", "_"): value
        for key, value in node_config.items()
        if key not in (PARTITION_ID_KEY, NUM_PARTITIONS_KEY)
    }
    if "site_name" in values:
        values["name"] = values.pop("site_name")
    if isinstance(values.get("label_map"), str):
        try:
            values["label_map"] = parse_label_map(values["label_map"])
        except ConfigError as error:
            raise ConfigError(f"node config: invalid value for 'label-map': {error}") from None
    return validate_site_config(values, "node config")


def simulated_site(
    partition_id: int,
    num_partitions: int,
    data: str,
    scheme: str,
    seed: int,
    **settings: Any,
) -> SiteConfig:
    """The site a simulation node plays: one partition of the run's dataset, split with the
    run's seed (a researcher's virtual clinics share one experiment); `settings` are further
    SiteConfig fields (privacy, device, skip_bad) shared by every virtual clinic."""
    return validate_site_config(
        {
            "split_seed": seed,
            **settings,
            "name": f"site-{partition_id + 1}",
            "data": data,
            "partition": {
                "scheme": scheme,
                "num_sites": num_partitions,
                "index": partition_id,
                "seed": seed,
            },
        },
        "simulation",
    )


def _simulated_settings(run_config: Mapping[str, Any], index: int) -> dict[str, Any]:
    """What every virtual clinic's site config says, from the run config (`hxr simulate`'s
    settings): privacy, device, skip-bad, and the clinic's label map (its own where
    `site-label-maps` names it)."""
    settings = {
        name.replace("-", "_"): run_config[name]
        for name in ("privacy", "device", "skip-bad")
        if name in run_config
    }
    try:
        own_maps = parse_site_label_maps(str(run_config.get("site-label-maps", "")))
        shared_map = parse_label_map(str(run_config.get("label-map", "")))
        label_map = own_maps.get(index + 1, shared_map)
    except ConfigError as error:
        raise ConfigError(f"run config: {error}") from None
    return {**settings, "label_map": label_map}


def site_from_node_config(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any]
) -> SiteConfig:
    """Resolve a node's site: site TOML, key-values, or (simulation) a partition of `data`."""
    if SITE_CONFIG_KEY in node_config:
        return load_site_config(Path(str(node_config[SITE_CONFIG_KEY])))
    if set(node_config) - {PARTITION_ID_KEY, NUM_PARTITIONS_KEY}:
        return _from_key_values(node_config)
    if PARTITION_ID_KEY in node_config and NUM_PARTITIONS_KEY in node_config:
        missing = [key for key in ("data", "partition") if key not in run_config]
        if missing:
            raise ConfigError(
                f"run config: simulated sites need '{missing[0]}' (the dataset to partition)"
            )
        index = int(node_config[PARTITION_ID_KEY])
        return simulated_site(
            index,
            int(node_config[NUM_PARTITIONS_KEY]),
            str(run_config["data"]),
            str(run_config["partition"]),
            int(run_config.get("seed", 0)),
            **_simulated_settings(run_config, index),
        )
    raise ConfigError(
        f"node config: no site configured; start the SuperNode with "
        f"--node-config '{SITE_CONFIG_KEY}=\"site.toml\"'"
    )
