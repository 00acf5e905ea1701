"""Partitioners: complete, disjoint by image and patient, seeded, and skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest

from hxr_model.data import RadiographDataset, label_skew, partition, partition_table
from hxr_model.errors import ConfigError, DataError


def labelled(count: int, classes: int = 4, seed: int = 0) -> RadiographDataset:
    """`count` blank 4 px images; patients hold 1-3 images of one class; two sources."""
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    while len(labels) < count:
        label, size = int(rng.integers(classes)), int(rng.integers(1, 4))
        labels += [label] * size
        patients += [f"P{len(patients)}-{label}"] * size
    labels, patients = labels[:count], patients[:count]
    return RadiographDataset(
        np.zeros((count, 4, 4), np.uint8),
        np.array(labels),
        [f"c{k}" for k in range(classes)],
        patient_ids=patients,
        sources=[("north", "south")[int(p[1:].split("-")[0]) % 2] for p in patients],
    )


SCHEMES = ["iid", "dirichlet:0.5", "quantity:1.0", "quantity:5,3,1,1", "by-source"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parts_cover_every_image_once_and_never_split_a_patient(scheme: str) -> None:
    dataset = labelled(600)
    sites = 2 if scheme == "by-source" else 4
    parts = partition(dataset, scheme, sites, seed=1)
    assert len(parts) == sites
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == list(range(600))
    owners: dict[str, int] = {}
    for site, part in enumerate(parts):
        for index in part:
            assert owners.setdefault(dataset.patient_ids[index], site) == site
    again = partition(dataset, scheme, sites, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_seed_changes_random_partitions() -> None:
    dataset = labelled(600)
    first, second = (partition(dataset, "dirichlet:0.5", 4, seed=s) for s in (0, 1))
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    dataset = labelled(2000)
    skews = [
        np.mean(
            [
                label_skew(dataset, partition(dataset, f"dirichlet:{alpha}:5", 5, s))
                for s in range(3)
            ]
        )
        for alpha in (100.0, 1.0, 0.1)
    ]
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.1 and skews[2] > 0.4


def test_iid_is_balanced_and_quantity_is_not() -> None:
    dataset = labelled(800)
    iid = partition(dataset, "iid", 4)
    sizes = [len(part) for part in iid]
    # Whole patients (1-3 images) per class: each site ends within a few images of 200.
    assert max(sizes) - min(sizes) <= 10 and label_skew(dataset, iid) < 0.05
    weighted = partition(dataset, "quantity:5,3,1,1", 4)
    assert [len(p) for p in weighted] == pytest.approx([400, 240, 80, 80], abs=12)
    assert label_skew(dataset, weighted) < 0.08


def test_by_source_follows_the_source_column() -> None:
    dataset = labelled(300)
    north, south = partition(dataset, "by-source", 2)
    assert {dataset.sources[i] for i in north} == {"north"}
    assert {dataset.sources[i] for i in south} == {"south"}
    with pytest.raises(DataError, match="2 sources"):
        partition(dataset, "by-source", 1)


def test_by_source_shares_out_the_sites_when_there_are_more_than_sources() -> None:
    dataset = labelled(300)
    counts = {s: list(dataset.sources).count(s) for s in ("north", "south")}
    parts = partition(dataset, "by-source", 7, seed=3)
    sources = [{dataset.sources[i] for i in part} for part in parts]
    assert all(len(names) == 1 for names in sources)  # every site holds one scanner's images
    per_source = {s: sum(names == {s} for names in sources) for s in counts}
    assert sum(per_source.values()) == 7 and min(per_source.values()) >= 1
    share = counts["north"] / 300
    assert abs(per_source["north"] - 7 * share) <= 1  # sites follow the sources' sizes
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
    north = [part for part, names in zip(parts, sources, strict=True) if names == {"north"}]
    assert max(map(len, north)) - min(map(len, north)) <= 10  # dealt evenly within a source
    again = partition(dataset, "by-source", 7, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_minimum_per_site_and_impossible_requests() -> None:
    dataset = labelled(200)
    for part in partition(dataset, "dirichlet:0.3:20", 4, seed=2):
        assert len(part) >= 20
    with pytest.raises(DataError, match="raise ALPHA"):
        partition(dataset, "dirichlet:0.05:60", 4)
    with pytest.raises(DataError, match="empty"):
        partition(labelled(3), "iid", 5)


@pytest.mark.parametrize(
    "scheme",
    [
        "random",
        "iid:3",
        "dirichlet",
        "dirichlet:-1",
        "dirichlet:1,2",
        "quantity:1,2",
        "by-source:x",
    ],
)
def test_bad_schemes_are_config_errors(scheme: str) -> None:
    with pytest.raises(ConfigError):
        partition(labelled(100), scheme, 4)


def test_table_counts_sites_and_total() -> None:
    dataset = labelled(300)
    parts = partition(dataset, "by-source", 2)
    table = partition_table(dataset, parts)
    lines = table.splitlines()
    assert lines[0].split() == ["c0", "c1", "c2", "c3", "images", "sources"]
    assert lines[1].split()[-2:] == [str(len(parts[0])), "north"]
    pooled = np.bincount(dataset.labels, minlength=4).tolist()
    assert lines[3].split() == ["all", *map(str, pooled), "300"]
    assert lines[4].startswith("label skew") and lines[4].endswith(
        f"{label_skew(dataset, parts):.3f}"
    )
