"""What may end a run after an epoch, short of its last: epoch hooks.

After each epoch the runner asks each hook `should_stop(history)`, in order; the first that says
yes ends the run, as its `ends` says:
- PRUNED: a sweep's pruner (sweep.prune builds it): the run ends KILLED, tagged `pruned_at_epoch`,
  and hands its last value to the sweeper;
- STOPPED: Ctrl-C or SIGTERM (`StopRequested`): KILLED after the epoch's checkpoint, resumable;
- FINISHED: early stopping (`EarlyStop`): tested and logged like any finished run.
Rank 0 asks every hook, the other ranks only those marked `every_rank` (a signal reaches each
process on its own), and the answers are agreed in one vote, so every rank ends the run alike. A
hook that reads the store learns the run when it is recorded (`opened`).
"""

from typing import Dict, List, Sequence

from mnist_cnn.engine.early_stopping import EarlyStopping
from mnist_cnn.interrupts import Stops
from mnist_cnn.tracking.states import RunState
from mnist_cnn.tracking.tracker import Tracker

History = Sequence[Dict[str, float]]  # each completed epoch's metrics, epoch 1 first


class EpochHook:
    """Asked after each epoch whether the run ends there."""

    ends = RunState.STOPPED  # what a stop by this hook makes of the run
    every_rank = False  # asked on every DDP rank, not only on rank 0

    def opened(self, tracker: Tracker) -> None:
        """The run is recorded (rank 0; an untracked run's tracker has no client)."""

    def should_stop(self, history: History) -> bool:
        raise NotImplementedError


class StopRequested(EpochHook):
    """Ctrl-C or SIGTERM asked the job to stop: it stops after the epoch that just ended."""

    ends = RunState.STOPPED
    every_rank = True

    def __init__(self, stops: Stops):
        self.stops = stops

    def should_stop(self, history: History) -> bool:
        return self.stops.requested()


class EarlyStop(EpochHook):
    """trainer.early_stopping: the first objective has not improved for `patience` epochs."""

    ends = RunState.FINISHED

    def __init__(self, rule: EarlyStopping, epochs: int):
        self.rule, self.epochs = rule, epochs

    def should_stop(self, history: History) -> bool:
        return len(history) < self.epochs and self.rule.stops(list(history))


def run_hooks(given: Sequence[EpochHook], stops: Stops, early: "EarlyStopping | None", epochs: int) -> List[EpochHook]:
    """The hooks a run asks, in order: those its caller gave (a sweep's pruner), a stop request,
    then early stopping."""
    return [*given, StopRequested(stops), *([EarlyStop(early, epochs)] if early is not None else [])]
