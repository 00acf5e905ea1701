"""The one label-map grammar, shared by `--labels` on the command line and `label-map` in site
and node configs.

A label map says which labels of a dataset become which classes. Items are separated by commas;
`local=federated` renames a dataset's label to the class name the federation uses (several local
labels may share a class), a bare `name` keeps that label as it is (`name=name`), and the two
forms mix freely. Blanks around items and names are ignored, and so are empty items. Class order
is the order the class names first appear.

    normal,pneumonia                         keep these two labels
    NORMAL=normal,BACTERIA=pneumonia,covid   rename two, keep covid
"""

from __future__ import annotations

from collections.abc import Mapping

from hxr_model.errors import ConfigError


def parse_label_map(text: str) -> dict[str, str]:
    """`{local label: class name}` for `text`; raises ConfigError naming an item that has an
    empty side (`=b`, `a=`)."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        local, equals, federated = (side.strip() for side in item.partition("="))
        if not local or (equals and not federated):
            raise ConfigError(
                f"bad label map item {item!r} in {text!r}: use NAME to keep a label or "
                "LOCAL=CLASS to rename it"
            )
        mapping[local] = federated or local
    return mapping


def format_label_map(mapping: Mapping[str, str]) -> str:
    """The text `parse_label_map` reads back as `mapping`."""
    return ",".join(
        local if local == name else f"{local}={name}" for local, name in mapping.items()
    )


def parse_site_label_maps(text: str) -> dict[int, dict[str, str]]:
    """Per-clinic label maps, `CLINIC:MAP;CLINIC:MAP` with clinics numbered from 1 (e.g.
    `2:covid19=normal,normal=covid19`): a run config holds no nested tables."""
    maps: dict[int, dict[str, str]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        clinic, colon, mapping = item.partition(":")
        if not colon or not clinic.strip().isdigit() or int(clinic) < 1:
            raise ConfigError(
                f"bad clinic label map {item!r} in {text!r}: use CLINIC:MAP, clinics from 1"
            )
        maps[int(clinic)] = parse_label_map(mapping)
    return maps


def format_site_label_maps(maps: Mapping[int, Mapping[str, str]]) -> str:
    """The text `parse_site_label_maps` reads back as `maps`."""
    return ";".join(f"{clinic}:{format_label_map(mapping)}" for clinic, mapping in maps.items())
