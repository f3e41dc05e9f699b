"""Errors that mean "the input is wrong" or "a service is gone", each with a message that names
what was wrong and how to fix it, and the exit codes every command uses.

The commands print a UserError as one paragraph, without a traceback, and exit with its
`exit_code`; any other exception is a bug, printed with its traceback (EXIT_CRASH).
"""

EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected error: a bug, printed with its traceback
EXIT_BAD_INPUT = 2  # a config, data file, checkpoint, tracking URI or flag is wrong; the message says which
# the store stopped answering (or refused a champion), or a sweep's joblib worker died (sweep.workers: a
# machine's resource gone, not bad input, nor a bug); the message says how to continue later
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the run was recorded as KILLED with its resume command


class UserError(Exception):
    """Base class: a bad config, data file, checkpoint or tracking store."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(UserError, ValueError):
    """A config that cannot describe a working model or run; the message names the offending key."""


class DataError(UserError, ValueError):
    """A data file that is missing, corrupt or not what the config says."""


class TrackingError(UserError, RuntimeError):
    """The MLflow store named by tracking.uri cannot be used."""


class TrackingLostError(TrackingError):
    """The MLflow store stopped answering during a run; the message says where the checkpoint is."""

    exit_code = EXIT_UNAVAILABLE


class CheckpointError(UserError, RuntimeError):
    """A checkpoint, or a run to resume, that cannot be used."""


class ModelError(UserError, LookupError):
    """A model (run id or model URI) that cannot be found, loaded, or used on the data."""


class DivergedError(UserError, RuntimeError):
    """The training loss exploded: the learning rate is too high for this model."""


class Pruned(Exception):
    """Not an error: a sweep's pruner stopped this job after `epoch`; its run ends KILLED, tagged
    `pruned_at_epoch` (names.PRUNED_AT), and the job returns its last value to the sweeper."""

    def __init__(self, epoch: int):
        super().__init__(f"pruned after epoch {epoch}")
        self.epoch = epoch


def failed_on_config(error: BaseException) -> bool:
    """Whether `error` is one the same config meets every time: a bad value, a missing or corrupt
    data file, a loss that diverged. A run that failed so is FAILED_ON_CONFIG (tracking.states):
    trying it again cannot help."""
    return isinstance(error, (ConfigError, DataError, DivergedError))
