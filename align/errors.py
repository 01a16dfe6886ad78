"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class KeelError(Exception):
    """Base class: a problem with the user's input (config, data, model reference, checkpoint)."""


class ConfigError(KeelError):
    """A config file or override is invalid; the message names the file and key."""


class DataError(KeelError):
    """A data file or row is malformed; the message names the file and line."""


class ModelNotFoundError(KeelError):
    """A model reference could not be resolved; the message lists what was tried."""


class CheckpointError(KeelError):
    """A checkpoint folder is missing, incomplete or has a corrupt manifest."""
