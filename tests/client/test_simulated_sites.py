import numpy as np

from client.client_app import SimulatedSites
from client.site_data import load_site_data
from hxr_model.data.phantoms import PHANTOM_CLASSES

DATA = "synthetic:64:2"
CLASSES = list(PHANTOM_CLASSES)


def site_labels(sites: SimulatedSites, index: int) -> np.ndarray:
    return load_site_data(sites.site(index, 2), CLASSES, 32).train.labels


def test_a_clinic_label_map_replaces_the_common_one_at_that_clinic_only() -> None:
    """The label-flip study's flipping clinic: same images, two classes swapped."""
    first, second = CLASSES[:2]
    swap = {name: name for name in CLASSES} | {first: second, second: first}
    plain = SimulatedSites(DATA, "by-source", 0)
    flipping = SimulatedSites(DATA, "by-source", 0, site_label_maps={1: swap})
    truth = site_labels(plain, 0)
    swapped = np.select([truth == 0, truth == 1], [1, 0], truth)
    assert {0, 1} <= set(truth.tolist())
    assert np.array_equal(site_labels(flipping, 0), swapped)
    assert np.array_equal(site_labels(flipping, 1), site_labels(plain, 1))
