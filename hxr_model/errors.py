"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits non-zero."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError


class HXRError(Exception):
    """Base class: the message alone must tell the user what is wrong and where."""


class DataError(HXRError):
    """A dataset reference, file or label the data layer cannot use."""


class CheckpointError(HXRError):
    """A checkpoint that is missing, corrupt, foreign or does not match the model."""


class ConfigError(HXRError):
    """A configuration file or value that fails validation (names the field)."""


class UnknownModelError(ConfigError, ValueError):
    """A model name the registry does not hold. Also a ValueError, so a pydantic validator that
    asks the registry reports it as that field's error."""


class DivergedModelError(HXRError):
    """A model whose outputs are NaN or infinite: its weights diverged (a learning rate too high,
    privacy noise too strong) and no metric of it means anything."""


def describe_validation_error(error: ValidationError, name: Callable[[str], str] = str) -> str:
    """`invalid value for 'field': problem` for pydantic's first complaint, on one line (repr
    keeps a key holding a line break on it); `name` spells field names the way the user wrote
    them (e.g. kebab-case run-config keys)."""
    first = error.errors()[0]
    field = ".".join(name(str(part)) for part in first["loc"]) or "(root)"
    return f"invalid value for {field!r}: {first['msg'].removeprefix('Value error, ')}"
