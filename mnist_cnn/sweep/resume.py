"""Jobs that start again: `resume_sweep=PARENT_RUN_ID` finishes a stopped sweep in the same parent
run, and a job that Slurm requeued continues its own run.

`mnist-cnn-train -m resume_sweep=ID` relaunches the sweep with the overrides its parent recorded
(`sweep_arguments`, before Hydra reads the command line; new values are accepted only for the run
settings, such as the launcher or tracking.uri). Every job then looks for its earlier run among
the parent's children, by config fingerprint (`job_start`): a job that finished, was pruned or
failed is not run again and returns its recorded value; a job stopped by a signal, or whose
process died (stale), continues its own run from its last checkpoint; a job never started runs.
The Optuna sweeper is warm-started from the same children (sweep.warm_start).

A job Slurm requeued (preemption, timeout, `scontrol requeue`; SLURM_RESTART_COUNT > 0) finds the
run tagged with its Slurm job id, which the first start opened and the SIGTERM before the requeue
left KILLED, and continues it from its last checkpoint: one run per job, never a duplicate.
"""

import json
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

from mnist_cnn.config.job import slurm_job_id, slurm_restarts
from mnist_cnn.config.keys import is_run_setting, override_key
from mnist_cnn.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
MULTIRUN_FLAGS = ("-m", "--multirun")


def sweep_arguments(argv: List[str]) -> List[str]:
    """`argv` with the recorded overrides of the sweep that `resume_sweep=ID` names added; the
    command line as it was when no resume_sweep is given."""
    given = [a for a in argv[1:] if override_key(a) == "resume_sweep"]
    if not given:
        return argv
    parent_id, where = given[-1].partition("=")[2], given[-1]
    if not set(MULTIRUN_FLAGS) & set(argv):
        raise ConfigError(f"{where} relaunches a sweep: add -m (--multirun).")
    recorded = _recorded_overrides(_tracking_uri(argv), parent_id, where)
    ours = {override_key(a): a for a in argv[1:] if "=" in a}
    changed = [a for key, a in ours.items() if not is_run_setting(key) and a not in recorded]
    if changed:
        raise ConfigError(
            f"{where}: {' '.join(changed)} would change the sweep, which keeps its own overrides "
            f"({' '.join(recorded)}); drop them, or start a new sweep."
        )
    added = [a for a in recorded if override_key(a) not in ours]
    print(f"mnist-cnn-train: resuming sweep {parent_id} with its overrides: {' '.join(added)}", file=sys.stderr)
    return argv + added  # after the flags: Hydra's parser takes the overrides as one trailing list


def _tracking_uri(argv: List[str]) -> str:
    """The store named on the command line, as the config would resolve it."""
    default = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    given = [a.partition("=")[2] for a in argv[1:] if override_key(a) == "tracking.uri"]
    return given[-1] if given and not given[-1].startswith("${") else default


def _recorded_overrides(uri: str, parent_id: str, where: str) -> List[str]:
    from mnist_cnn.sweep.parent import SWEEP_ARGV  # MLflow is slow to import: only when resuming
    from mnist_cnn.tracking import store
    from mnist_cnn.tracking.heartbeat import is_stale
    from mnist_cnn.tracking.lookup import find_run

    parent = find_run(store.connect(uri, create=False), parent_id, where)
    if SWEEP_ARGV not in parent.data.tags:
        raise ConfigError(f"{where}: run {parent_id} is not the parent run of a sweep; give the id of one (mnist-cnn-runs lists them).")
    if parent.info.status == "RUNNING" and not is_stale(parent):
        raise CheckpointError(f"{where}: sweep {parent_id} is still running (its heartbeat is fresh); stop that sweep first.")
    return json.loads(parent.data.tags[SWEEP_ARGV])


def starts_again(cfg: DictConfig) -> bool:
    """A job of a resumed sweep, or one that Slurm requeued (tracked, and not already resuming)."""
    return cfg.tracking.enabled and not cfg.resume and bool(cfg.resume_sweep or slurm_restarts())


def job_start(cfg: DictConfig) -> Tuple[DictConfig, Optional[Dict[str, float]]]:
    """For a job that starts again: `(cfg, metrics)` where metrics are its earlier run's when there
    is nothing left to train; else `(cfg, None)`, cfg set to continue its earlier run if it has one."""
    earlier = requeued_run(cfg) if slurm_restarts() else earlier_run(cfg)
    if earlier is None:
        return cfg, None
    from mnist_cnn.errors import PRUNED_AT

    run_id, status = earlier.info.run_id, earlier.info.status
    done = ("FINISHED",) if slurm_restarts() else ("FINISHED", "FAILED")  # a requeue retries what its stop failed
    if status in done or PRUNED_AT in earlier.data.tags:
        log.info("run %s did this job already (%s): not run again", run_id, "PRUNED" if PRUNED_AT in earlier.data.tags else status)
        return cfg, dict(earlier.data.metrics) if status != "FAILED" else {}
    log.info("continuing this job's run %s (%s) from its last checkpoint", run_id, status)
    cfg = cfg.copy()
    cfg.resume, cfg.resume_sweep = run_id, None
    return cfg, None


def requeued_run(cfg: DictConfig):
    """The run that this Slurm job opened before it was requeued; None if it opened none."""
    from mnist_cnn.tracking import store
    from mnist_cnn.tracking.fingerprint import SLURM_JOB

    client = store.connect(cfg.tracking.uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    found = client.search_runs([experiment.experiment_id], f"tags.{SLURM_JOB} = '{slurm_job_id()}'", order_by=["attributes.start_time DESC"]) if experiment else []
    log.info("Slurm requeued job %s (restart %d): %s", slurm_job_id(), slurm_restarts(), f"run {found[0].info.run_id}" if found else "no run yet")
    return found[0] if found else None


def earlier_run(cfg: DictConfig):
    """The child of sweep `cfg.resume_sweep` that ran this job's config: the finished one if any,
    else the latest; None if the job never started."""
    from mnist_cnn.engine.loop import resolve_device
    from mnist_cnn.engine.precision import candidates
    from mnist_cnn.engine.repro import config_sha256
    from mnist_cnn.sweep.parent import children
    from mnist_cnn.tracking import store

    shas = set()  # fingerprinted as a run records it: with its precision resolved (null: measured, so either)
    for resolved in candidates(cfg.trainer.precision, resolve_device(cfg.trainer.device)):
        probe = cfg.copy()
        probe.trainer.precision = resolved
        shas.add(config_sha256(probe))
    same = [r for r in children(store.connect(cfg.tracking.uri), cfg.resume_sweep) if r.data.tags.get("config_sha256") in shas]
    done = [r for r in same if r.info.status == "FINISHED"]
    return (done or same or [None])[-1]
