"""What is known about the job that is running: its overrides, multirun mode and sweep file (from
Hydra), and its Slurm job id and restart count (from Slurm's environment).

Outside Hydra (a test or a script calling engine.train.run) there are no overrides and no sweep.
"""

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

SWEEP_FILE = "mlflow_sweep.json"  # written by sweep.callback: {"parent_run_id": ..., "swept": [keys]}
STUDY, STORAGE = "optuna_study", "optuna_storage"  # and by an Optuna search (sweep.search): its study, where
TRIAL_ENV = "MNIST_CNN_OPTUNA_TRIAL"  # set in each job of an Optuna search: the number of the job's trial


@dataclass(frozen=True)
class Outcome:
    """How a run ended, which is what a sweep job hands back to its sweeper: its final metrics
    (empty when it failed), its MLflow run (None when untracked), the epoch a pruner stopped it
    after (None when it was not pruned) and the fingerprint of the weights it tested (None when it
    tested none)."""

    metrics: Dict[str, float]
    run_id: Optional[str] = None
    pruned_at: Optional[int] = None
    weights_sha256: Optional[str] = None

    def values(self, metrics: Sequence[str]) -> Optional[List[float]]:
        """The values of `metrics`, or None when one is missing or not finite."""
        values = [self.metrics.get(m, math.nan) for m in metrics]
        return values if all(math.isfinite(v) for v in values) else None


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweeps_here() -> bool:
    """Whether this job runs in its sweep's own process, between its siblings (Hydra's basic
    launcher), rather than in a worker or a job of its own (joblib, submitit, Slurm)."""
    return in_multirun() and str(HydraConfig.get().launcher._target_).endswith(".BasicLauncher")


def job_overrides() -> List[str]:
    """The command-line overrides of this run or job (`optimizer.lr=0.003`, ...)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def sweep_info() -> Dict[str, Any]:
    """What the launching process wrote for this job's sweep; empty outside a tracked multirun."""
    path = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE if in_multirun() else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def slurm_job_id() -> Optional[str]:
    """This Slurm job (`JOBID`, or `ARRAYJOBID_TASKID` for an array task); None outside Slurm. A
    requeued job keeps its id."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def slurm_restarts() -> int:
    """How many times Slurm requeued this job (preemption, timeout, `scontrol requeue`)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) if slurm_job_id() else 0
