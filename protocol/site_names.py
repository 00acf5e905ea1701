"""The names a clinic may go by: they become folder and file names on the coordinator's disk."""

from __future__ import annotations

import re

SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def is_site_name(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(SITE_NAME_PATTERN, value) is not None
