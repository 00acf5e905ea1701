"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits non-zero."""


class HXRError(Exception):
    """Base class: the message alone must tell the user what is wrong and where."""


class DataError(HXRError):
    """A dataset reference, file or label the data layer cannot use."""


class CheckpointError(HXRError):
    """A checkpoint that is missing, corrupt, foreign or does not match the model."""


class ConfigError(HXRError):
    """A configuration file or value that fails validation (names the field)."""
