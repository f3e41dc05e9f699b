"""Where a run's wall time goes: start-up, training steps, validation, checkpoints, test, figures,
the model, and the total, logged as `time_<phase>_s` metrics when the run ends.

A job's clock (`JobClock`, which the job owns) starts when its process started (the first job of a
process pays the imports) or, for a later job of a sweep run in the same process, when Hydra handed
it over; a caller of the Python API that gives none counts from the run's set-up. Each phase adds up
over a resumed run's processes: the seconds ride in the checkpoint. On a GPU the device is
synchronised before each reading, so queued work is counted in the phase that queued it.

The first job of a process also keeps Python's garbage collector out of its start-up. Importing
torch, MLflow, SQLAlchemy and matplotlib leaves hundreds of thousands of objects and little garbage,
yet with the default thresholds the collector walks them again and again (docs/speed.md has the
count and its cost). So it is off from `JobClock.start` until the first step, when everything alive
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
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional

import psutil

from mnist_cnn.names import time_metric

PHASES = ("startup", "train", "val", "checkpoint", "test", "figures", "model", "total")


@dataclass
class Lap:
    seconds: float = 0.0


@dataclass
class JobClock:
    """When one job began, and whether its start-up runs without the garbage collector. Without
    `start` (a caller of the Python API), the job begins when the clock is made."""

    handed: float = field(default_factory=time.time)  # when the job was handed over (Hydra called its task)
    began: float = -1.0  # what its seconds count from: `handed`, or for a process's first job its start
    collector_paused: bool = False

    def __post_init__(self) -> None:
        if self.began < 0:
            self.began = self.handed

    @classmethod
    def start(cls, pays_imports: bool) -> "JobClock":
        """A job begins now. The one that pays the process's imports (its first) counts from the
        process's own start, and runs its start-up without the collector."""
        now = time.time()
        if not pays_imports:
            return cls(now)
        paused = gc.isenabled()
        if paused:
            gc.disable()
        return cls(now, now - process_age(), paused)

    def startup_done(self) -> None:
        """The collector back on, with what the start-up made frozen out of its reach (a no-op
        unless `start` paused it)."""
        if self.collector_paused:
            gc.freeze()
            gc.enable()
            self.collector_paused = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """The garbage collector off for the block (a launching process's imports, as a first job's:
    see above), then what the block made frozen and collection on again, if it was on."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.freeze()
            gc.enable()


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

    def __init__(
        self,
        job: JobClock,
        sync: Optional[Callable[[], None]] = None,
        earlier: Optional[Dict[str, float]] = None,
    ):
        self.job = job  # when this process's part of the run began
        self.sync = sync  # waits for the device's queued work (torch.cuda.synchronize); None on a CPU
        self.seconds: Dict[str, float] = defaultdict(float, earlier or {})
        self.began = job.began
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
        self.job.startup_done()
        self.seconds["startup"] += self._now() - self.began

    def state(self) -> Dict[str, float]:
        """The seconds so far, total included: what a checkpoint carries."""
        return {**self.seconds, "total": self.total_before + self._now() - self.began}

    def metrics(self) -> Dict[str, float]:
        state = self.state()
        return {time_metric(p): state.get(p, 0.0) for p in PHASES}
