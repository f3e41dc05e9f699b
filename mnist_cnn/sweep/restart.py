"""Jobs that start again: a job of a sweep relaunched with `resume_sweep=PARENT_RUN_ID`, and a job
that Slurm requeued.

A job of a resumed sweep looks for its earlier run among the parent's children, by config
fingerprint (`job_start`): a job that finished, was pruned or failed is not run again and returns
its recorded value; a job stopped by a signal, or whose process died (stale), continues its own run
from its last checkpoint; a job never started runs.

A job Slurm requeued (preemption, timeout, `scontrol requeue`; SLURM_RESTART_COUNT > 0) finds the
run tagged with its Slurm job id, which the first start opened and the SIGTERM before the requeue
left KILLED, and continues it from its last checkpoint: one run per job, never a duplicate.
"""

import logging
from typing import Optional, Tuple

from mlflow.entities import Run
from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.config.job import Outcome, slurm_job_id, slurm_restarts
from mnist_cnn.config.keys import config_sha256
from mnist_cnn.sweep.parent import children
from mnist_cnn.tracking import store
from mnist_cnn.tracking.states import RunState, state_of

log = logging.getLogger(__name__)


def starts_again(cfg: DictConfig) -> bool:
    """A job of a resumed sweep, or one that Slurm requeued (tracked, and not already resuming)."""
    return cfg.tracking.enabled and not cfg.resume and bool(cfg.resume_sweep or slurm_restarts())


def job_start(cfg: DictConfig) -> Tuple[DictConfig, Optional[Outcome]]:
    """For a job that starts again: `(cfg, outcome)`, how its earlier run ended, when there is
    nothing left to train; else `(cfg, None)`, cfg set to continue its earlier run if it has one."""
    earlier = requeued_run(cfg) if slurm_restarts() else earlier_run(cfg)
    if earlier is None:
        return cfg, None
    run_id, state = earlier.info.run_id, state_of(earlier)
    retried = slurm_restarts() and state is RunState.FAILED  # a requeue retries what its stop failed
    if not state.continuable and not retried:
        log.info("run %s did this job already (%s): not run again", run_id, state.value)
        metrics = dict(earlier.data.metrics) if not state.failed else {}
        pruned_at = earlier.data.tags.get(names.PRUNED_AT)
        return cfg, Outcome(metrics, run_id, int(pruned_at) if pruned_at else None)
    log.info("continuing this job's run %s (%s) from its last checkpoint", run_id, state.value)
    cfg = cfg.copy()
    cfg.resume, cfg.resume_sweep = run_id, None
    return cfg, None


def requeued_run(cfg: DictConfig) -> Optional[Run]:
    """The run that this Slurm job opened before it was requeued; None if it opened none."""
    client = store.connect(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    found = (
        client.search_runs(
            [experiment.experiment_id],
            f"tags.{names.SLURM_JOB} = '{slurm_job_id()}'",
            order_by=["attributes.start_time DESC"],
        )
        if experiment
        else []
    )
    log.info(
        "Slurm requeued job %s (restart %d): %s",
        slurm_job_id(),
        slurm_restarts(),
        f"run {found[0].info.run_id}" if found else "no run yet",
    )
    return found[0] if found else None


def earlier_run(cfg: DictConfig) -> Optional[Run]:
    """The child of sweep `cfg.resume_sweep` that ran this job's config (the same config_sha256):
    the finished one if any, else the latest; None if the job never started."""
    sha = config_sha256(cfg)
    same = [
        r
        for r in children(store.connect(cfg.tracking.uri), cfg.resume_sweep)
        if r.data.tags.get(names.CONFIG_SHA256) == sha
    ]
    done = [r for r in same if state_of(r) is RunState.FINISHED]
    return (done or same or [None])[-1]
