"""A clinic's local data, split and labelled the way the federation expects.

Sites name their labels as their archive does ("PNEUMONIA", "opacity"); the site config's label
map (applied by the data layer) renames them, and the labels are re-indexed into the federation's
class order, so class k means the same disease at every clinic. A site without some class is
fine; a class the federation does not know is not.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from client.disclosure import split_seed
from client.site_config import SiteConfig
from hxr_model.data import DataSplits, RadiographDataset, load_splits, partition
from hxr_model.errors import ConfigError, DataError
from hxr_model.metrics import model_class_indices


class FederationLabels(Dataset):
    """A site dataset whose labels are indices into the federation's class list."""

    def __init__(
        self, dataset: RadiographDataset, mapping: np.ndarray, class_names: Sequence[str]
    ) -> None:
        self.dataset = dataset
        self.mapping = mapping
        self.class_names = list(class_names)
        self.labels = mapping[np.asarray(dataset.labels, dtype=np.int64)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.dataset[index]
        return image, int(self.labels[index])


@dataclass
class SiteData:
    train: FederationLabels
    val: FederationLabels
    test: FederationLabels | None
    skipped: int

    @property
    def evaluation(self) -> FederationLabels:
        """The split the global model is scored on: test, or validation where there is none."""
        return self.test if self.test is not None and len(self.test) else self.val


def label_mapping(
    site_name: str, local_names: Sequence[str], class_names: Sequence[str]
) -> np.ndarray:
    """Index array: site class id -> federation class id (matched by name)."""
    try:
        return model_class_indices(local_names, class_names)
    except DataError as error:
        raise ConfigError(f"site {site_name}: {error}; map them with 'label_map'") from None


Study = tuple[DataSplits, dict[str, tuple[np.ndarray, ...]]]


# Virtual clinics of one study share a dataset: a process decodes and partitions it once for all
# the clinics it plays, not once per clinic. Bounded, so a coordinator's requests cannot grow it.
@functools.lru_cache(maxsize=4)
def _shared_study(
    data: str,
    image_size: int,
    skip_bad: bool,
    seed: int,
    label_map: tuple[tuple[str, str], ...],
    partition_key: tuple[str, int, int] | None,
) -> Study:
    """The splits of `data` and, for simulated clinics, each split's parts (scheme, sites,
    seed in `partition_key`)."""
    splits = load_splits(
        data,
        image_size,
        skip_bad=skip_bad,
        seed=seed,
        label_map=dict(label_map) or None,
        # A simulated clinic is part of a study whose pooled test split must exist.
        carve_missing_test=partition_key is not None,
    )
    parts = {}
    if partition_key is not None:
        for name in ("train", "val", "test"):
            split = getattr(splits, name)
            if split is not None:
                parts[name] = tuple(partition(split, *partition_key))
    return splits, parts


def _site_study(site: SiteConfig, image_size: int) -> Study:
    spec = site.partition
    return _shared_study(
        site.data,
        image_size,
        site.skip_bad,
        split_seed(site),
        tuple(site.label_map.items()),  # in order: it decides the class order
        None if spec is None else (spec.scheme, spec.num_sites, spec.seed),
    )


_CACHE: dict[str, tuple[tuple[tuple[str, ...], int], SiteData]] = {}


def load_site_data(site: SiteConfig, class_names: Sequence[str], image_size: int) -> SiteData:
    """Decode and split once per process (simulated clients are asked every round), with the
    site's own split seed; one entry per site, replaced when a run asks for other classes or
    another size, so what a coordinator sends cannot grow the cache."""
    site_key = site.model_dump_json()
    request = (tuple(class_names), image_size)
    cached = _CACHE.get(site_key)
    if cached is None or cached[0] != request:
        splits, parts = _site_study(site, image_size)
        mapping = label_mapping(site.name, splits.class_names, class_names)

        def federated(name: str) -> FederationLabels:
            split = getattr(splits, name)
            if site.partition is not None:
                split = split.subset(parts[name][site.partition.index])
            return FederationLabels(split, mapping, class_names)

        data = SiteData(
            train=federated("train"),
            val=federated("val"),
            test=None if splits.test is None else federated("test"),
            skipped=len(splits.skipped),
        )
        _CACHE[site_key] = (request, data)
    return _CACHE[site_key][1]
