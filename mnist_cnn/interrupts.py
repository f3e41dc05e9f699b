"""What Ctrl-C and SIGTERM do to a run.

Outside a run (start-up: reading data, opening the store) a signal raises KeyboardInterrupt at
once: there is nothing to save. Once a run is recorded, inside `graceful()`, the first signal only
sets `requested`; the run stops at the next step boundary or the next epoch's end, whichever comes
first, so an epoch either completes with its checkpoint and metrics or leaves no trace. A second
signal raises at once: the process can always be stopped, even while a tracking server hangs.
While a run is opened or its final status written (`shielded()`, a few seconds at most), signals
wait: an impatient second Ctrl-C cannot leave a run RUNNING, or half-recorded. Between two jobs of
a sweep that runs them in its own process, the first signal also only asks: the next job stops
the sweep as it starts (`job_started`). Raised at once, it would land in Hydra's code building the
next job's config, where OmegaConf turns it into an AttributeError (exit 1, not 130).
"""

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

log = logging.getLogger(__name__)


class _State:
    requested = False  # a stop was asked for during graceful(); checked at step and epoch boundaries
    graceful = False
    shielded = False
    pending = False  # a signal arrived while shielded
    between_jobs = False  # a sweep's process after one of its jobs ended, before the next starts


def install() -> None:
    """Route SIGINT and SIGTERM through `_handle` (the main thread only; elsewhere Python forbids it)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _handle)


def _handle(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _State.shielded:
        _State.pending = True
        log.warning("%s: recording the run in MLflow first (a few seconds at most)", name)
    elif (_State.graceful or _State.between_jobs) and not _State.requested:
        _State.requested = True
        where = "at the next step" if _State.graceful else "before the next job"
        log.warning("%s: stopping %s; send it again to stop at once", name, where)
    else:
        raise KeyboardInterrupt(name)


def requested() -> bool:
    """Whether Ctrl-C or SIGTERM asked for a stop at the next step."""
    return _State.requested


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested (call at step and epoch boundaries)."""
    if requested():
        raise KeyboardInterrupt("stop requested")


def reset() -> None:
    _State.requested = _State.graceful = _State.shielded = _State.pending = _State.between_jobs = False


def job_started() -> None:
    """A job starts: one that a signal asked to stop, between jobs, stops here (KeyboardInterrupt)."""
    _State.between_jobs = False
    if _State.requested:
        _State.requested = False
        raise KeyboardInterrupt("stop requested between jobs")


def job_ended(sweeping: bool) -> None:
    """A job ended; in a sweep, signals only ask for a stop until the next one starts."""
    _State.between_jobs = sweeping


@contextmanager
def graceful() -> Iterator[None]:
    _State.graceful = True
    try:
        yield
    finally:
        _State.graceful = False


@contextmanager
def shielded(then_stop: bool = True) -> Iterator[None]:
    """Signals wait until the block ends; then, with `then_stop`, one that arrived raises."""
    previous, _State.shielded, _State.pending = _State.shielded, True, False
    try:
        yield
    finally:
        _State.shielded = previous
    if _State.pending and then_stop:
        raise KeyboardInterrupt("signal received while the run was being recorded")
