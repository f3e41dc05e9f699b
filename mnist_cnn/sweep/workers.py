"""A sweep's jobs in joblib's worker processes, and what is left when one of those processes dies.

When a worker dies (SIGKILL from the out-of-memory killer, a segfault), loky, joblib's pool, kills
every other worker at once, mid-step, and the launch raises `TerminatedWorkerError` (a
`BrokenProcessPool`): no job can record how it ended. So that the command can say which job's
worker died, and leave no run RUNNING without a process:

- each job in a worker writes a record as it starts (its process id, Hydra's job number and its
  overrides) into the sweep folder, and removes it as it ends (`job_started`, `job_ended`, called
  by mnist-cnn-train's task in the worker);
- the launching process watches the processes of those records (`Watch`: a thread waiting on their
  pidfds), and notes the first that dies with its record still there: the others died because it did;
- when the launch fails so, `lost` marks the runs of the jobs in flight STOPPED (tagged with why,
  so that `resume_sweep=` continues each from its last checkpoint), and returns the one line the
  command ends with (exit 3: the parent run is then closed as a stopped sweep's is).

One sweep per process: the launching process's watch is this module's `_watch`.
"""

import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import psutil
from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.config.keys import override_key
from mnist_cnn.errors import EXIT_UNAVAILABLE, UserError
from mnist_cnn.tracking.links import resume_command
from mnist_cnn.tracking.states import RunState, state_of

log = logging.getLogger(__name__)

RECORDS = ".workers"  # in the sweep folder: one file per job in flight in a worker, named by its process id
JOBLIB = "JoblibLauncher"
POLL_S = 0.2  # how often the watch looks for the records of jobs that started meanwhile
DEATH_WAIT_S = 10  # how long `lost` waits for loky to have ended the other workers


class WorkerLost(UserError):
    """A joblib worker of the sweep died with a job in flight; the message names the job and how to continue."""

    exit_code = EXIT_UNAVAILABLE


@dataclass(frozen=True)
class InFlight:
    """A job a worker was running: the worker's process id, Hydra's job number, the job's overrides."""

    pid: int
    number: int
    overrides: List[str]

    def describe(self, run_id: Optional[str], swept: Sequence[str]) -> str:
        """`job 1 (optimizer.lr=0.003 seed=2, run ID)`: its values of the swept keys (all its
        overrides where none is swept)."""
        shown = [o for o in self.overrides if override_key(o) in swept] or self.overrides
        run = f", run {run_id}" if run_id else ", no run opened yet"
        return f"job {self.number} ({shlex.join(shown)}{run})"


def in_pool(config: DictConfig) -> bool:
    """Whether the sweep of `config` runs its jobs in joblib's worker processes."""
    return str(config.hydra.launcher._target_).rsplit(".", 1)[-1] == JOBLIB


def job_started(sweep_dir: Path, number: int, overrides: Sequence[str]) -> None:
    """In a worker: record the job that starts now in this process (Hydra's job `number` of the
    sweep in `sweep_dir`, with its `overrides`)."""
    folder = sweep_dir / RECORDS
    folder.mkdir(exist_ok=True)
    (folder / str(os.getpid())).write_text(json.dumps({"number": number, "overrides": list(overrides)}))


def job_ended(sweep_dir: Path) -> None:
    (sweep_dir / RECORDS / str(os.getpid())).unlink(missing_ok=True)


def in_flight(sweep_dir: Path) -> Dict[int, InFlight]:
    """The jobs whose workers recorded them and have not ended them, by process id."""
    found = {}
    for path in (sweep_dir / RECORDS).glob("*"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile, or being written
            continue
        found[int(path.name)] = InFlight(int(path.name), record["number"], record["overrides"])
    return found


class Watch:
    """In the launching process: waits on the processes of the jobs in flight (their pidfds) and
    notes the first that dies with a job (its record still there), with the signal that killed it."""

    def __init__(self, sweep_dir: Path, uri: str, parent: Optional[str], swept: Sequence[str]):
        self.sweep_dir, self.uri, self.parent, self.swept = sweep_dir, uri, parent, swept
        self.first: List[int] = []  # the process(es) found dead first: one, unless two died in one instant
        self.signal: Optional[str] = None  # the signal that killed the first, where it could be read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="joblib-workers", daemon=True)

    def start(self) -> "Watch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        fds: Dict[int, int] = {}
        try:
            while not self._stop.is_set() and not self.first:
                jobs = in_flight(self.sweep_dir)
                for pid in set(jobs) - set(fds):
                    try:
                        fds[pid] = os.pidfd_open(pid)
                    except ProcessLookupError:  # dead before it was watched: found by its record alone
                        continue
                poller = select.poll()
                for fd in fds.values():
                    poller.register(fd, select.POLLIN)
                ready = {fd for fd, _ in poller.poll(POLL_S * 1000)}
                dead = [pid for pid, fd in fds.items() if fd in ready]
                if dead:  # a worker that ends idle (loky's timeout) has removed its job's record first
                    jobs = in_flight(self.sweep_dir)
                    self.first = [pid for pid in dead if pid in jobs]
                    self.signal = _killed_by(fds[self.first[0]]) if self.first else None
                    for pid in set(dead) - set(self.first):
                        os.close(fds.pop(pid))
        finally:
            for fd in fds.values():
                os.close(fd)


def _killed_by(pidfd: int) -> Optional[str]:
    """The signal that ended a child process, read without reaping it (loky does); None if it
    exited, or was reaped already."""
    try:
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:
        return None
    if info is None or info.si_code not in (os.CLD_KILLED, os.CLD_DUMPED):
        return None
    return signal.Signals(info.si_status).name


def _signal_named_by_loky(error: BaseException) -> Optional[str]:
    """The signal in loky's own message (`The exit codes of the workers are {SIGKILL(-9)}`), when it
    names one: where loky reaped the worker before the watch could read how it ended."""
    named = set(re.findall(r"\b(SIG[A-Z0-9]+)\(-\d+\)", str(error)))
    return named.pop() if len(named) == 1 else None


_watch: Optional[Watch] = None


def watch(sweep_dir: Path, uri: str, parent: Optional[str], swept: Sequence[str]) -> None:
    """Start watching the workers of the sweep in `sweep_dir` (its parent run `parent` in `uri`,
    None if untracked; the keys it varies `swept`)."""
    global _watch
    _watch = Watch(sweep_dir, uri, parent, swept).start()


def unwatch() -> None:
    """The sweep has ended: stop watching, and remove the records' folder."""
    global _watch
    if _watch is not None:
        _watch.stop()
        shutil.rmtree(_watch.sweep_dir / RECORDS, ignore_errors=True)
        _watch = None


def lost(error: BaseException) -> BaseException:
    """What the command ends with when a launch raised `error`, a BrokenProcessPool: WorkerLost,
    saying which job's worker died, why, and how to continue, once the runs of the jobs in flight
    are STOPPED; `error` itself where no sweep of this process watches joblib's workers."""
    watching = _watch
    if watching is None:
        return error
    jobs = in_flight(watching.sweep_dir)
    deadline = time.monotonic() + DEATH_WAIT_S  # loky kills the other workers as it raises
    while not all(_dead(pid) for pid in jobs) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    unwatch()
    first = [pid for pid in watching.first if pid in jobs]
    killer = watching.signal or _signal_named_by_loky(error)
    why = f"killed by {killer}" if killer else "ended by a signal or a crash"
    if killer == "SIGKILL":
        why += " (as the out-of-memory killer does when memory runs out)"
    runs = _stop_runs(watching, jobs, first, why)
    died = " and ".join(jobs[pid].describe(runs.get(pid), watching.swept) for pid in first)
    others = ", ".join(
        job.describe(runs.get(pid), watching.swept) for pid, job in sorted(jobs.items()) if pid not in first
    )
    message = f"the worker process of {died} was {why}" if died else f"a worker process of the sweep was {why}"
    if others:
        message += f"; joblib then ended the workers of {others} with it"
    return WorkerLost(f"{message}. {_how_to_continue(watching)}")


def _dead(pid: int) -> bool:
    """Whether process `pid` has ended (reaped, or a zombie that loky has yet to reap: never waited
    for here, which would take its exit status from loky)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _stop_runs(watching: Watch, jobs: Dict[int, InFlight], first: List[int], why: str) -> Dict[int, str]:
    """Mark STOPPED the sweep's runs that the workers of `jobs` trained and no process trains any
    more, tagged with why, so that `resume_sweep=` continues each from its last checkpoint
    (runner.restart); returns their run ids by process id."""
    if watching.parent is None:
        return {}
    from mnist_cnn.tracking import store  # MLflow: seconds to import, only once a worker died
    from mnist_cnn.tracking.ending import end_run  # MLflow, as above
    from mnist_cnn.tracking.lookup import children  # MLflow, as above

    client, host, stopped = store.connect(watching.uri), socket.gethostname(), {}
    killed = " and ".join(f"job {jobs[pid].number}'s" for pid in first) or "another job's"
    for run in children(client, watching.parent):
        tags, run_id = run.data.tags, run.info.run_id
        pid = int(tags[names.PID]) if tags.get(names.PID, "").isdigit() else None
        alive = state_of(run) in (RunState.RUNNING, RunState.STALE)  # (a zombie still answers signal 0)
        if pid in jobs and tags.get(names.HOST) == host and alive and _dead(pid):
            reason = (
                f"its joblib worker process was {why}"
                if pid in first
                else f"joblib ended its worker process when {killed} was {why}"
            )
            end_run(
                client,
                run_id,
                RunState.STOPPED,
                {names.INTERRUPTED: reason, names.RESUME_COMMAND: resume_command(run_id, watching.uri)},
            )
            stopped[pid] = run_id
    return stopped


def _how_to_continue(watching: Watch) -> str:
    if watching.parent is None:
        return (
            "Nothing was tracked (tracking.enabled=false): start the sweep again "
            "(with fewer hydra.launcher.n_jobs if memory ran out)."
        )
    return (
        "Continue the sweep, each job once (with fewer hydra.launcher.n_jobs if memory ran out), with: "
        + resume_command(watching.parent, watching.uri, sweep=True)
    )
