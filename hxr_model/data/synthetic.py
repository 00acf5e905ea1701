"""The built-in phantom set (`synthetic[:N[:SITES]]`): labelled chests, lesion masks, no download.

With SITES the images come from SITES virtual clinics, each rendered in its own scanner style and
tagged `source = scanner-K`, so the `by-source` partition reproduces real clinic shift.
"""

from __future__ import annotations

from hxr_model.data.catalog import Catalog, Entry
from hxr_model.data.phantoms import PHANTOM_CLASSES, generate_phantoms, site_style
from hxr_model.errors import DataError

DEFAULT_COUNT = 600
# The phantom set is a fixed dataset: the load seed only changes splits and partitions.
DATA_SEED = 0


def list_synthetic(count: int, sites: int | None, image_size: int) -> Catalog:
    if count < 1:
        raise DataError(f"synthetic:{count}: need at least one image")
    if sites is not None and not 1 <= sites <= count:
        raise DataError(f"synthetic:{count}:{sites}: the number of sites must be 1..{count}")
    entries: list[Entry] = []
    groups = sites or 1
    for site in range(groups):
        share = count // groups + (1 if site < count % groups else 0)
        style = site_style(site, DATA_SEED) if sites else None
        source = f"scanner-{site}" if sites else None
        batch = generate_phantoms(share, image_size, seed=DATA_SEED + site, style=style)
        prefix = f"synthetic/{source}" if source else "synthetic"
        entries.extend(
            Entry(
                f"{prefix}/{index}", PHANTOM_CLASSES[label], source=source, pixels=image, mask=mask
            )
            for index, (image, label, mask) in enumerate(
                zip(batch.images, batch.labels.tolist(), batch.masks, strict=True)
            )
        )
    return Catalog(entries, list(PHANTOM_CLASSES))
