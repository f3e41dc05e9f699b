"""Where a run's wall time goes: start-up, training steps, validation, checkpoints, test, figures,
the model, and the total, logged as `time_<phase>_s` metrics when the run ends.

A job's clock starts when its process started (the first job of a process pays the imports) or,
for a later job of a sweep run in the same process, when Hydra handed it over; a caller of the
Python API that never said when its job began (`job_started`) counts from the run's set-up. Each phase adds up
over a resumed run's processes: the seconds ride in the checkpoint. On a GPU the device is
synchronised before each reading, so queued work is counted in the phase that queued it.

The first job of a process also keeps Python's garbage collector out of its start-up. Importing
torch, MLflow, SQLAlchemy and matplotlib leaves hundreds of thousands of objects and little garbage,
yet with the default thresholds the collector walks them again and again (docs/speed.md has the
count and its cost). So it is off from `job_started()` until the first step, when everything alive
(modules, the model, the store's client) is frozen into the permanent generation and collection
resumes for what training makes. Later jobs of a sweep keep it on and freeze nothing: what a job
leaves must stay collectable (of the first job's own objects, any caught in a reference cycle stay
until the process ends).
"""

import gc
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional

import psutil

from mnist_cnn.names import time_metric

PHASES = ("startup", "train", "val", "checkpoint", "test", "figures", "model", "total")


@dataclass
class Lap:
    seconds: float = 0.0


class _Job:
    first = True  # the process's first job: it paid the imports
    started: Optional[float] = None  # time.time() when the job about to run began; taken by its Stopwatch
    collector_off = False  # job_started() turned the garbage collector off for the start-up


def job_started() -> None:
    """Called as each job begins: the first job of a process counts from the process's own start,
    and runs its start-up without the garbage collector."""
    _Job.started = time.time() - (process_age() if _Job.first else 0.0)
    if _Job.first and gc.isenabled():
        gc.disable()
        _Job.collector_off = True
    _Job.first = False


def startup_done() -> None:
    """The collector back on, with what the start-up made frozen out of its reach (a no-op unless
    job_started() turned it off)."""
    if _Job.collector_off:
        gc.freeze()
        gc.enable()
        _Job.collector_off = False


def process_age() -> float:
    """Seconds since this process started. On Linux from its start in clock ticks since boot (to
    10 ms); psutil's create_time() adds the boot time, which /proc gives in whole seconds only."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        return time.time() - psutil.Process().create_time()


class Stopwatch:
    """Seconds spent in each phase of one run, over all of its processes."""

    def __init__(self, sync: Optional[Callable[[], None]] = None, earlier: Optional[Dict[str, float]] = None):
        self.sync = sync  # waits for the device's queued work (torch.cuda.synchronize); None on a CPU
        self.seconds: Dict[str, float] = defaultdict(float, earlier or {})
        self.began = _Job.started if _Job.started is not None else time.time()
        _Job.started = None  # taken: the next run of this process starts its own clock
        self.total_before = self.seconds["total"]  # what earlier processes of a resumed run spent

    def _now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.time()

    @contextmanager
    def phase(self, name: str) -> Iterator["Lap"]:
        """Time the block as `name`; the Lap it yields holds the block's own seconds once it ends."""
        lap, start = Lap(), self._now()
        try:
            yield lap
        finally:
            lap.seconds = self._now() - start
            self.seconds[name] += lap.seconds

    def first_step(self) -> None:
        """The start-up ends here: imports, data, model, the store opened."""
        startup_done()
        self.seconds["startup"] += self._now() - self.began

    def state(self) -> Dict[str, float]:
        """The seconds so far, total included: what a checkpoint carries."""
        return {**self.seconds, "total": self.total_before + self._now() - self.began}

    def metrics(self) -> Dict[str, float]:
        state = self.state()
        return {time_metric(p): state.get(p, 0.0) for p in PHASES}
