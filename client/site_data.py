"""A clinic's local data, split and labelled the way the federation expects.

Sites name their labels as their archive does ("PNEUMONIA", "opacity"); the site config's label
map (applied by the data layer) renames them, and the labels are re-indexed into the federation's
class order, so class k means the same disease at every clinic. A site without some class is
fine; a class the federation does not know is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from client.disclosure import split_seed
from client.site_config import SiteConfig
from hxr_model.data import RadiographDataset, load_splits, partition
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


def _site_part(dataset: RadiographDataset, site: SiteConfig) -> RadiographDataset:
    if site.partition is None:
        return dataset
    spec = site.partition
    parts = partition(dataset, spec.scheme, spec.num_sites, spec.seed)
    return dataset.subset(parts[spec.index])


_CACHE: dict[str, tuple[tuple[tuple[str, ...], int], SiteData]] = {}


def load_site_data(site: SiteConfig, class_names: Sequence[str], image_size: int) -> SiteData:
    """Decode and split once per process (simulated clients are asked every round), with the
    site's own split seed; one entry per site, replaced when a run asks for other classes or
    another size, so what a coordinator sends cannot grow the cache."""
    site_key = site.model_dump_json()
    request = (tuple(class_names), image_size)
    cached = _CACHE.get(site_key)
    if cached is None or cached[0] != request:
        splits = load_splits(
            site.data,
            image_size,
            skip_bad=site.skip_bad,
            seed=split_seed(site),
            label_map=site.label_map or None,
            # A simulated clinic is part of a study whose pooled test split must exist.
            carve_missing_test=site.partition is not None,
        )
        mapping = label_mapping(site.name, splits.class_names, class_names)

        def federated(split: RadiographDataset) -> FederationLabels:
            return FederationLabels(_site_part(split, site), mapping, class_names)

        data = SiteData(
            train=federated(splits.train),
            val=federated(splits.val),
            test=None if splits.test is None else federated(splits.test),
            skipped=len(splits.skipped),
        )
        _CACHE[site_key] = (request, data)
    return _CACHE[site_key][1]
