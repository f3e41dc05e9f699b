"""What Ctrl-C and SIGTERM do to a run.

Each job owns its stop requests (`Stops`). Outside a run (start-up: reading data, opening the
store) a signal raises KeyboardInterrupt at once: there is nothing to save. Once a run is recorded,
inside `stops.graceful()`, the first signal only asks for a stop; the run stops at the next step
boundary or the next epoch's end, whichever comes first, so an epoch either completes with its
checkpoint and metrics or leaves no trace. A second signal raises at once: the process can always
be stopped, even while a tracking server hangs. While a run is opened or its final status written
(`held()`, a few seconds at most), signals wait: an impatient second Ctrl-C cannot leave a run
RUNNING, or half-recorded.

mnist-cnn-train routes the process's signals to the job that runs now (`Signals`). Between two jobs
of a sweep that runs them in its own process, the first signal also only asks: the next job stops
the sweep as it starts. Raised at once, it would land in Hydra's code building the next job's
config, where OmegaConf turns it into an AttributeError (exit 1, not 130). A sweep whose jobs run
side by side in processes of their own passes a stop on to them (`stop_children`).
"""

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import psutil

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stops:
    """The stop requests of one job."""

    def __init__(self) -> None:
        self._requested = False  # asked for during graceful(); checked at step and epoch boundaries
        self._graceful = False

    def handle(self, signum: int) -> None:
        """What Ctrl-C (SIGINT) or SIGTERM does to this job: asks for a stop while it trains, else
        (and when asked again) raises KeyboardInterrupt."""
        name = signal.Signals(signum).name
        if self._graceful and not self._requested:
            self._requested = True
            log.warning("%s: stopping at the next step; send it again to stop at once", name)
        else:
            raise KeyboardInterrupt(name)

    def requested(self) -> bool:
        """Whether Ctrl-C or SIGTERM asked for a stop at the next step."""
        return self._requested

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop was requested (called at step and epoch boundaries)."""
        if self._requested:
            raise KeyboardInterrupt("stop requested")

    @contextmanager
    def graceful(self) -> Iterator[None]:
        """While the block runs (a recorded run trains), the first signal only asks for a stop."""
        self._graceful = True
        try:
            yield
        finally:
            self._graceful = False


class Signals:
    """This process's Ctrl-C and SIGTERM, sent to the job that runs now (mnist-cnn-train owns one)."""

    def __init__(self) -> None:
        self.job: Optional[Stops] = None
        self.between_jobs = False  # a sweep's own process after one of its jobs ended, before the next
        self.asked = False  # a signal came between jobs: the next job stops as it starts
        self.idle_worker = False  # a launcher's worker process after its job ended: its launcher owns it now

    def install(self) -> None:
        """Route SIGINT and SIGTERM here (the main thread only; elsewhere Python forbids it)."""
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.job is not None:
            self.job.handle(signum)
        elif self.idle_worker:  # no job to stop: a stopped sweep ends this process itself
            log.debug("%s in an idle worker: nothing to stop", signal.Signals(signum).name)
        elif self.between_jobs and not self.asked:
            self.asked = True
            log.warning("%s: stopping before the next job; send it again to stop at once", signal.Signals(signum).name)
        else:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def job_started(self) -> Stops:
        """A job starts, with stop requests of its own; one that a signal asked to stop, between
        jobs, stops here (KeyboardInterrupt)."""
        self.between_jobs = False
        if self.asked:
            self.asked = False
            raise KeyboardInterrupt("stop requested between jobs")
        self.job = Stops()
        return self.job

    def job_ended(self, sweeping: bool, worker: bool = False) -> None:
        """A job ended: in a sweep run in this process (`sweeping`), signals only ask for a stop until
        the next one starts; in a launcher's `worker` (joblib's, submitit's), which the launcher may
        hand another job or shut down, they have nothing to stop."""
        self.job, self.between_jobs, self.idle_worker = None, sweeping, worker and not sweeping


@contextmanager
def held(then_stop: bool = True) -> Iterator[None]:
    """Signals wait until the block ends (a run being opened or its final status written: seconds
    at most); then, with `then_stop`, one that came raises KeyboardInterrupt. Off the main thread,
    where Python handles no signal, the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: List[str] = []

    def wait(signum: int, frame: Any) -> None:
        came.append(signal.Signals(signum).name)
        log.warning("%s: recording the run in MLflow first (a few seconds at most)", came[-1])

    previous = {signum: signal.signal(signum, wait) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if came and then_stop:
        raise KeyboardInterrupt(f"{came[0]} received while the run was being recorded")


def stop_children() -> int:
    """Pass a stop on to the jobs this process launched side by side (joblib's workers, submitit's
    local jobs): SIGTERM to each child process but the resource trackers of multiprocessing and
    joblib. Each job then ends its run STOPPED after its current step. Returns how many were sent."""
    sent = 0
    for child in psutil.Process().children():
        try:
            if not any("resource_tracker" in part for part in child.cmdline()):
                child.send_signal(signal.SIGTERM)
                sent += 1
        except psutil.Error:  # it ended meanwhile
            continue
    if sent:
        log.warning("SIGTERM passed on to the %d job process(es) this sweep started", sent)
    return sent
