"""A virtual clinic's site config comes from the run config `hxr simulate` hands Flower: its
partition of `data`, the settings every clinic shares, and a clinic's own label map."""

import numpy as np
import pytest

from client.site_config import site_from_node_config
from client.site_data import load_site_data
from hxr_model.data.phantoms import PHANTOM_CLASSES
from hxr_model.errors import ConfigError

CLASSES = list(PHANTOM_CLASSES)
RUN_CONFIG = {"data": "synthetic:64:2", "partition": "by-source", "seed": 0}


def clinic(index: int, **run_config):
    node = {"partition-id": index, "num-partitions": 2}
    return site_from_node_config(node, RUN_CONFIG | run_config)


def site_labels(index: int, **run_config) -> np.ndarray:
    return load_site_data(clinic(index, **run_config), CLASSES, 32).train.labels


def test_the_run_config_sets_what_every_virtual_clinic_shares() -> None:
    shared = {"privacy": "overlay", "device": "cpu", "skip-bad": True, "label-map": "a=b,c"}
    sites = [clinic(index, **shared) for index in range(2)]
    assert [site.name for site in sites] == ["site-1", "site-2"]
    for site in sites:
        assert (site.privacy, site.device, site.skip_bad) == ("overlay", "cpu", True)
        assert site.label_map == {"a": "b", "c": "c"}
    assert clinic(0).privacy == "heatmap" and clinic(0).label_map == {}


def test_a_clinic_label_map_replaces_the_common_one_at_that_clinic_only() -> None:
    """The label-flip study's flipping clinic: same images, two classes swapped."""
    first, second = CLASSES[:2]
    swap = ",".join([f"{first}={second}", f"{second}={first}", *CLASSES[2:]])
    flipping = {"site-label-maps": f"1:{swap}"}
    truth = site_labels(0)
    swapped = np.select([truth == 0, truth == 1], [1, 0], truth)
    assert {0, 1} <= set(truth.tolist())
    assert np.array_equal(site_labels(0, **flipping), swapped)
    assert np.array_equal(site_labels(1, **flipping), site_labels(1))


@pytest.mark.parametrize("maps", ["0:a=b", "x:a=b", "1-a=b", "1:=b"])
def test_a_bad_clinic_label_map_names_itself(maps: str) -> None:
    with pytest.raises(ConfigError, match="run config: bad"):
        clinic(0, **{"site-label-maps": maps})
