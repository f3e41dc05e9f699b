"""Errors that mean "the input is wrong", each with a message that names it and says how to fix it.

`mnist-cnn-train` prints these as one paragraph and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """Base class: a bad config, data file, checkpoint or tracking store."""


class ConfigError(UserError, ValueError):
    """A config that cannot describe a working model or run; the message names the offending key."""


class DataError(UserError, ValueError):
    """A data file that is missing, corrupt or not what the config says."""


class TrackingError(UserError, RuntimeError):
    """The MLflow store named by tracking.uri cannot be used."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used."""


class DivergedError(UserError, RuntimeError):
    """The training loss stopped being a finite number: the learning rate is too high for this model."""
