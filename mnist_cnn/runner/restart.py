"""Runs that start again: why (a `Restart`, resolved once where a job starts), which earlier run a
job continues, and whether a run may be continued at all.

Three things continue a run instead of starting a new one, each a kind of Restart:
- `resume=RUN_ID` or `resume=path/last.pt`: continue that run (the user's own);
- `resume_sweep=PARENT_RUN_ID`: each job of a stopped sweep looks for its earlier run among the
  parent's children, by config fingerprint; a trial that a stopped Optuna search asks again, with
  the values it had, is such a job;
- a Slurm requeue (preemption, timeout, `scontrol requeue`): the job looks for the run its first
  start opened, tagged with its Slurm job id.
A job whose earlier run is done (finished, pruned or failed) returns how it ended and trains
nothing; one whose run was stopped, or whose process died (stale), continues it from its last
checkpoint, in the same run: the same as `resume=` that run. Only one process may continue a run
(the claim, tracking.claim), and a run that a live process still writes is never continued
(`check_free`, for runs and for a sweep's parent alike). No torch here: mnist-cnn-train checks a
sweep to resume before Hydra starts.
"""

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from mlflow import MlflowClient
from mlflow.entities import Run
from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.config.job import JobContext
from mnist_cnn.config.keys import config_sha256
from mnist_cnn.errors import CheckpointError, ModelError, TrackingError
from mnist_cnn.runner.outcome import Outcome
from mnist_cnn.tracking import store
from mnist_cnn.tracking.heartbeat import silence_s, stale_after_s
from mnist_cnn.tracking.lookup import children, find_run
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.states import RunState, state_of

log = logging.getLogger(__name__)


class Kind(str, Enum):
    RESUME = "resume"
    SWEEP = "resume_sweep"
    REQUEUE = "slurm_requeue"


@dataclass(frozen=True)
class Restart:
    kind: Kind
    target: str  # the run id or checkpoint file; the sweep's parent run id; the Slurm job id

    @classmethod
    def of(cls, cfg: DictConfig, ctx: JobContext) -> Optional["Restart"]:
        """What restarts the job of `cfg`, or None: it starts a new run."""
        if cfg.resume:
            return cls(Kind.RESUME, str(cfg.resume))
        if not cfg.tracking.enabled:
            return None
        if cfg.resume_sweep:
            return cls(Kind.SWEEP, str(cfg.resume_sweep))
        if ctx.slurm and ctx.slurm.restarts:
            return cls(Kind.REQUEUE, ctx.slurm.job_id)
        return None

    def leaves(self, state: RunState) -> bool:
        """Whether a job that finds its earlier run in `state` has nothing left to train: finished,
        pruned or failed. One exception: a requeue tries a FAILED run again (the SIGTERM before
        the requeue may be what failed it); a resumed sweep keeps its record as it was."""
        if state is RunState.FAILED and self.kind is Kind.REQUEUE:
            return False
        return not state.continuable

    def earlier_run(self, client: MlflowClient, cfg: DictConfig) -> Optional[Run]:
        """The run this job opened before: the sweep's child with the same config fingerprint (the
        finished one if any, else the latest), or the run tagged with this Slurm job; None if the
        job never started one."""
        if self.kind is Kind.SWEEP:
            sha = config_sha256(cfg)
            same = [r for r in children(client, self.target) if r.data.tags.get(names.CONFIG_SHA256) == sha]
            done = [r for r in same if state_of(r) is RunState.FINISHED]
            return (done or same or [None])[-1]
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        found = (
            client.search_runs(
                [experiment.experiment_id],
                f"tags.{names.SLURM_JOB} = '{self.target}'",
                order_by=["attributes.start_time DESC"],
            )
            if experiment
            else []
        )
        log.info("Slurm requeued job %s: %s", self.target, f"run {found[0].info.run_id}" if found else "no run yet")
        return found[0] if found else None


def outcome_of(run: Run) -> Outcome:
    """How a run that a restart leaves alone ended, as its job hands it back to the sweeper."""
    state = state_of(run)
    pruned_at = run.data.tags.get(names.PRUNED_AT)
    return Outcome(
        {} if state.failed else dict(run.data.metrics), run.info.run_id, int(pruned_at) if pruned_at else None
    )


def check_free(run: Run, where: str, sweep: bool = False) -> None:
    """Raise CheckpointError unless run `run` may be continued here: no live process writes it, and
    (a run, not a sweep's parent, which a resume may finish again) it has not FINISHED."""
    state, run_id, tags = state_of(run), run.info.run_id, run.data.tags
    if state is RunState.RUNNING and sweep:
        raise CheckpointError(
            f"{where}: sweep {run_id} is still running (its heartbeat is fresh); stop that sweep first."
        )
    if state is RunState.RUNNING:
        raise CheckpointError(
            f"{where}: run {run_id} is RUNNING and its heartbeat is {silence_s(tags, run.info.start_time):.0f} s old: "
            f"a process (pid {tags.get(names.PID, '?')} on {tags.get(names.HOST, '?')}) may still be training it. "
            f"Stop that process first; a run whose heartbeat is older than {stale_after_s(tags):.0f} s counts as "
            "stale and can be resumed."
        )
    if state is RunState.FINISHED and not sweep:
        raise CheckpointError(f"{where}: run {run_id} already FINISHED; there is nothing to resume.")


def free_run(uri: str, run_id: str, where: str) -> MlflowClient:
    """A client for `uri`, once run `run_id` is known to be there and free to continue (`check_free`).
    The store is only looked in, never created: a resume that finds no run leaves nothing behind."""
    try:
        client = store.connect(uri, create=False)
    except TrackingError as e:
        raise TrackingError(f"{where}: run {run_id} was looked for in {e}") from e
    try:
        run = find_run(client, run_id, where)
    except ModelError as e:
        raise ModelError(f"{e} It was looked for in tracking.uri={redact(uri)!r}.") from e
    check_free(run, where)
    return client
