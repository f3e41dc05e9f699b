"""How a run ended, in one word: the `RunState` every reader uses, and the MLflow status each is
written as.

MLflow keeps four statuses a run of ours can have (RUNNING, FINISHED, KILLED, FAILED); what a
user, a resumed sweep or a pruner needs to know is finer:

- RUNNING: a live process trains it (its heartbeat is fresh);
- STALE: RUNNING in the store, but no process is left behind it (SIGKILL, a lost machine or
  server): it can be continued;
- FINISHED: trained, tested and logged (early stopping included);
- STOPPED: Ctrl-C or SIGTERM ended it after its last complete epoch: it can be continued;
- PRUNED: a sweep's pruner ended it (KILLED, tagged `pruned_at_epoch`): it is done;
- FAILED_ON_CONFIG: it failed on its config or data (a bad value, a missing file, a loss that
  diverged): the same config would fail again;
- FAILED: any other error (a bug, a full disk, a store that refused a write).

`state_of(run)` reads it off any MLflow run; `mlflow_status(state)` is what a writer sets. These
two are the only places that spell MLflow's statuses. No MLflow import: a run is read through
`run.info` and `run.data.tags`.
"""

from enum import Enum
from typing import Any

from mnist_cnn.names import FAILED_ON, FAILED_ON_CONFIG_VALUE, PRUNED_AT
from mnist_cnn.tracking.heartbeat import process_gone, silence_s, stale_after_s


class RunState(str, Enum):
    RUNNING = "RUNNING"
    STALE = "STALE"
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    PRUNED = "PRUNED"
    FAILED_ON_CONFIG = "FAILED_ON_CONFIG"
    FAILED = "FAILED"

    @property
    def failed(self) -> bool:
        return self in (RunState.FAILED, RunState.FAILED_ON_CONFIG)

    @property
    def continuable(self) -> bool:
        """Stopped before its end with nothing wrong: `resume=` continues it from its last checkpoint."""
        return self in (RunState.STOPPED, RunState.STALE)


_STATUS = {  # what each state is written as
    RunState.RUNNING: "RUNNING",
    RunState.FINISHED: "FINISHED",
    RunState.STOPPED: "KILLED",
    RunState.PRUNED: "KILLED",
    RunState.FAILED_ON_CONFIG: "FAILED",
    RunState.FAILED: "FAILED",
}


def mlflow_status(state: RunState) -> str:
    """The MLflow status a run in `state` is written with (STALE is never written: it is read)."""
    return _STATUS[state]


def state_of(run: Any) -> RunState:
    """How MLflow run `run` ended, or that it still runs (or only seems to: STALE)."""
    status, tags = run.info.status, run.data.tags
    if status == "RUNNING":
        return RunState.STALE if is_stale(run) else RunState.RUNNING
    if status == "FINISHED":
        return RunState.FINISHED
    if status == "KILLED":
        return RunState.PRUNED if PRUNED_AT in tags else RunState.STOPPED
    if status == "FAILED":
        return RunState.FAILED_ON_CONFIG if tags.get(FAILED_ON) == FAILED_ON_CONFIG_VALUE else RunState.FAILED
    return RunState.RUNNING  # SCHEDULED: MLflow's, before a run starts; not one of ours


def is_stale(run: Any) -> bool:
    """A RUNNING run that nothing trains any more: its heartbeat stopped, or its process, on this
    machine, has exited (then there is no need to wait for the heartbeat to age)."""
    if run.info.status != "RUNNING":
        return False
    tags = run.data.tags
    return silence_s(tags, run.info.start_time) > stale_after_s(tags) or process_gone(tags)
