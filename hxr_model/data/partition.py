"""Split one dataset into virtual clinics for simulation.

Schemes (seeded; whole patients move together, so sites never share an image or a patient):
- `iid`: equal sizes, every site with the pooled class mix.
- `dirichlet:ALPHA[:MIN]`: label skew; each class is shared out by its own Dirichlet(ALPHA) draw
  (small ALPHA -> sites dominated by few classes), redrawn until every site has MIN images.
- `quantity:ALPHA[:MIN]` or `quantity:W1,W2,...`: size skew with the pooled class mix; site
  shares from one Dirichlet(ALPHA) draw or the given weights.
- `by-source`: one site per value of `source` (real scanners / hospitals), in natural order.
  With more sites than sources (a study of many district clinics with a few scanner types),
  each source gets a share of the sites proportional to its images, and its patients are dealt
  evenly over them with its class mix: every site still holds one scanner's images.
"""

from __future__ import annotations

import numpy as np

from hxr_model.data.catalog import natural_key
from hxr_model.data.dataset import RadiographDataset
from hxr_model.data.splits import check_seed, group_labels, join_groups, patient_groups
from hxr_model.errors import ConfigError, DataError
from hxr_model.text_table import format_table

SCHEMES = "iid, dirichlet:ALPHA[:MIN], quantity:ALPHA[:MIN], quantity:W1,W2,... or by-source"
MAX_DRAWS = 100
_DEFAULT_MIN = 10


def partition(
    dataset: RadiographDataset, scheme: str, num_sites: int, seed: int = 0
) -> list[np.ndarray]:
    """Sorted index arrays into `dataset`, one per site; raises DataError when a site would be
    empty (or below MIN) and ConfigError for a scheme it cannot parse."""
    if num_sites < 1:
        raise ConfigError(f"number of sites must be at least 1, got {num_sites}")
    check_seed(seed)
    groups = patient_groups(dataset)
    labels = group_labels(dataset, groups)
    kind, _, argument = scheme.partition(":")
    if kind == "by-source" and not argument:
        site_of = _by_source(dataset, groups, labels, num_sites, np.random.default_rng(seed))
    elif kind == "iid" and not argument:
        shares = np.full((len(dataset.class_names), num_sites), 1.0 / num_sites)
        site_of = _deal(groups, labels, shares, np.random.default_rng(seed))
    elif kind in ("dirichlet", "quantity") and argument:
        site_of = _draw(groups, labels, len(dataset.class_names), scheme, num_sites, seed)
    else:
        raise ConfigError(f"unknown partition scheme '{scheme}': use {SCHEMES}")
    parts = [
        join_groups([groups[g] for g in np.flatnonzero(site_of == site)])
        for site in range(num_sites)
    ]
    if not all(len(part) for part in parts):
        raise DataError(
            f"partition '{scheme}' of {len(dataset)} images leaves a site empty with "
            f"{num_sites} sites; use fewer sites"
        )
    return parts


def _parse_numbers(scheme: str, text: str) -> list[float]:
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise ConfigError(f"bad partition scheme '{scheme}': use {SCHEMES}") from None
    if not all(np.isfinite(value) and value > 0 for value in values):
        raise ConfigError(f"partition scheme '{scheme}': values must be positive numbers")
    return values


def _draw(
    groups: list[np.ndarray],
    labels: np.ndarray,
    classes: int,
    scheme: str,
    num_sites: int,
    seed: int,
) -> np.ndarray:
    """Dirichlet label skew or quantity skew, redrawn until every site holds MIN images."""
    kind, _, argument = scheme.partition(":")
    head, _, minimum_text = argument.partition(":")
    values = _parse_numbers(scheme, head)
    minimum = (
        int(_parse_numbers(scheme, minimum_text)[0])
        if minimum_text
        else max(1, min(_DEFAULT_MIN, sum(map(len, groups)) // (2 * num_sites)))
    )
    if len(values) > 1 and (kind != "quantity" or len(values) != num_sites):
        raise ConfigError(
            f"partition scheme '{scheme}': give one ALPHA, or for quantity one weight per site "
            f"({num_sites})"
        )
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DRAWS):
        if len(values) == num_sites > 1:
            shares = np.tile(np.array(values) / sum(values), (classes, 1))
        elif kind == "quantity":
            shares = np.tile(rng.dirichlet(np.full(num_sites, values[0])), (classes, 1))
        else:
            shares = rng.dirichlet(np.full(num_sites, values[0]), size=classes)
        site_of = _deal(groups, labels, shares, rng)
        sizes = np.bincount(site_of, weights=[len(group) for group in groups], minlength=num_sites)
        if sizes.min() >= minimum:
            return site_of
    raise DataError(
        f"partition '{scheme}': no draw in {MAX_DRAWS} gave every one of {num_sites} sites "
        f"{minimum} images; raise ALPHA, lower MIN or use fewer sites"
    )


def _deal(
    groups: list[np.ndarray], labels: np.ndarray, shares: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Site per group: each class's patients (by `labels`, the group's main class), shuffled,
    go one by one to the site furthest below its target (`shares[class, site]` of that class's
    images); ties go to the smaller site."""
    num_sites = shares.shape[1]
    site_of = np.zeros(len(groups), dtype=np.int64)
    totals = np.zeros(num_sites)
    for label in range(shares.shape[0]):
        members = rng.permutation(np.flatnonzero(labels == label))
        targets = shares[label] * sum(len(groups[g]) for g in members)
        filled = np.zeros(num_sites)
        for group in members:
            deficit = targets - filled
            site = min(range(num_sites), key=lambda k: (-deficit[k], totals[k], k))
            site_of[group] = site
            filled[site] += len(groups[group])
            totals[site] += len(groups[group])
    return site_of


def _by_source(
    dataset: RadiographDataset,
    groups: list[np.ndarray],
    labels: np.ndarray,
    num_sites: int,
    rng: np.random.Generator,
) -> np.ndarray:
    group_sources = [dataset.sources[group[0]] for group in groups]
    unknown = sum(source is None for source in group_sources)
    if unknown:
        raise DataError(f"by-source partition: {unknown} image(s) have no source")
    names = sorted(set(group_sources), key=natural_key)
    if num_sites < len(names):
        raise DataError(
            f"by-source partition: the data has {len(names)} sources ({', '.join(names)}), "
            f"more than {num_sites} sites: each source needs a site of its own"
        )
    source_of = np.array([names.index(source) for source in group_sources], dtype=np.int64)
    if num_sites == len(names):
        return source_of
    sizes = np.bincount(source_of, weights=[len(group) for group in groups])
    site_of = np.zeros(len(groups), dtype=np.int64)
    first_site = 0
    for source, count in enumerate(_sites_per_source(sizes, num_sites)):
        members = np.flatnonzero(source_of == source)
        shares = np.full((len(dataset.class_names), count), 1.0 / count)
        site_of[members] = first_site + _deal(
            [groups[g] for g in members], labels[members], shares, rng
        )
        first_site += count
    return site_of


def _sites_per_source(sizes: np.ndarray, num_sites: int) -> np.ndarray:
    """One site per source, the rest shared in proportion to the sources' image counts (largest
    remainder, ties to the earlier source)."""
    quota = sizes / sizes.sum() * (num_sites - len(sizes))
    counts = 1 + np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    counts[order[: num_sites - counts.sum()]] += 1
    return counts


def label_skew(dataset: RadiographDataset, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's class mix and the pooled mix of all
    partitioned images: 0 for identical mixes, 1 for disjoint ones."""
    counts = np.array(
        [np.bincount(dataset.labels[part], minlength=len(dataset.class_names)) for part in parts],
        dtype=np.float64,
    )
    pooled = counts.sum(axis=0) / counts.sum()
    mixes = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return float(np.mean(0.5 * np.abs(mixes - pooled).sum(axis=1)))


def partition_table(dataset: RadiographDataset, parts: list[np.ndarray]) -> str:
    """Per-site counts per class, totals, sources and the label skew."""
    rows: list[list[object]] = []
    for site, part in enumerate(parts):
        counts = np.bincount(dataset.labels[part], minlength=len(dataset.class_names))
        sources = sorted({s for s in (dataset.sources[i] for i in part) if s}, key=natural_key)
        rows.append([f"site {site}", *counts.tolist(), len(part), ",".join(sources) or "-"])
    everything = np.concatenate(parts)
    pooled = np.bincount(dataset.labels[everything], minlength=len(dataset.class_names))
    rows.append(["all", *pooled.tolist(), len(everything), ""])
    table = format_table(["", *dataset.class_names, "images", "sources"], rows)
    return f"{table}\nlabel skew (mean total-variation distance to the pooled class mix): " + (
        f"{label_skew(dataset, parts):.3f}"
    )
