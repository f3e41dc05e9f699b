"""`resume_sweep=PARENT_RUN_ID`: finish a stopped sweep in the same parent run.

`mnist-cnn-train -m resume_sweep=ID` relaunches the sweep with the overrides its parent recorded
(`sweep_arguments`, before Hydra reads the command line; new values are accepted only for the run
settings, such as the launcher or tracking.uri). Every job then looks for its earlier run among
the parent's children, by config fingerprint (`job_start`): a job that finished, was pruned or
failed is not run again and returns its recorded value; a job stopped by a signal, or whose
process died (stale), continues its own run from its last checkpoint; a job never started runs.
The Optuna sweeper is warm-started from the same children (sweep.optuna_sweeper).
"""

import json
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

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


def job_start(cfg: DictConfig) -> Tuple[DictConfig, Optional[Dict[str, float]]]:
    """For a job of a resumed sweep: `(cfg, metrics)` where metrics are its earlier run's when there
    is nothing left to train; else `(cfg, None)`, cfg set to continue its earlier run if it has one."""
    earlier = earlier_run(cfg)
    if earlier is None:
        return cfg, None
    from mnist_cnn.errors import PRUNED_AT

    run_id, status = earlier.info.run_id, earlier.info.status
    if status in ("FINISHED", "FAILED") or PRUNED_AT in earlier.data.tags:
        log.info("run %s did this job already (%s): not run again", run_id, "PRUNED" if PRUNED_AT in earlier.data.tags else status)
        return cfg, dict(earlier.data.metrics) if status != "FAILED" else {}
    log.info("continuing this job's run %s (%s) from its last checkpoint", run_id, status)
    cfg = cfg.copy()
    cfg.resume, cfg.resume_sweep = run_id, None
    return cfg, None


def earlier_run(cfg: DictConfig):
    """The child of sweep `cfg.resume_sweep` that ran this job's config: the finished one if any,
    else the latest; None if the job never started."""
    from mnist_cnn.engine.loop import resolve_device, resolve_precision
    from mnist_cnn.engine.repro import config_sha256
    from mnist_cnn.sweep.parent import children
    from mnist_cnn.tracking import store

    probe = cfg.copy()  # fingerprinted as a run records it: with its precision resolved
    probe.trainer.precision = resolve_precision(probe.trainer.precision, resolve_device(probe.trainer.device))
    sha = config_sha256(probe)
    same = [r for r in children(store.connect(cfg.tracking.uri), cfg.resume_sweep) if r.data.tags.get("config_sha256") == sha]
    done = [r for r in same if r.info.status == "FINISHED"]
    return (done or same or [None])[-1]
