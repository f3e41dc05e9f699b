"""What a sweep's parent run reports: one row per job, seeds grouped, the best job (pandas only).

The same tables serve `mnist-cnn-runs --group-seeds` and the files logged on the parent
(`sweep/summary.csv`, `sweep/seed_groups.csv`).
"""

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import pandas as pd
from mlflow.entities import Run

from mnist_cnn.names import PRUNED_AT, SEED_METRICS, TRAIN_TIME
from mnist_cnn.tracking.run_names import run_name
from mnist_cnn.tracking.states import RunState, state_of

FINISHED = RunState.FINISHED.value  # the status column holds each job's RunState
Objective = Tuple[str, str]  # a metric and its direction (maximize or minimize): config.schema.objectives


def jobs_table(
    jobs: Iterable[Run], swept: List[str], metrics: Sequence[str], ended: Optional[Dict[str, Dict[str, float]]] = None
) -> pd.DataFrame:
    """One row per job: id, name, status (its RunState), the epoch it was pruned at, each swept key's value as
    logged, the objective's `metrics`, train time and accuracies: the latest logged, or for a job in
    `ended` (run id: values) the values of the epoch whose weights it ended with."""
    columns = list(dict.fromkeys([*metrics, TRAIN_TIME, *SEED_METRICS]))
    rows = []
    for job in jobs:
        params = job.data.params
        row = {"run_id": job.info.run_id, "name": job.info.run_name, "status": state_of(job).value}
        row[PRUNED_AT] = int(job.data.tags[PRUNED_AT]) if PRUNED_AT in job.data.tags else None
        for key in swept:  # `optimizer=sgd` chooses an option: its params say optimizer.name=sgd
            row[key] = params.get(key, params.get(f"{key}.name"))
        values = {**job.data.metrics, **(ended or {}).get(job.info.run_id, {})}
        for key in columns:
            row[key] = values.get(key, math.nan)
        rows.append(row)
    table = pd.DataFrame(
        rows,
        columns=["run_id", "name", "status", PRUNED_AT, *swept, *columns],
    )
    return table.astype({PRUNED_AT: "Int64"})  # an epoch, or <NA>


def best_job(table: pd.DataFrame, objectives: Sequence[Objective]) -> Optional[pd.Series]:
    """The FINISHED job with the best value of the first objective, ties broken by the next ones
    (pruned, failed and stopped jobs never win). With several objectives it is on the Pareto
    front: no job beats it on the first without being worse on another."""
    metrics = [metric for metric, _ in objectives]
    finished = table[(table["status"] == FINISHED) & table[metrics].notna().all(axis=1)]
    if finished.empty:
        return None
    ranked = finished.sort_values(metrics, ascending=[d == "minimize" for _, d in objectives], kind="stable")
    return ranked.iloc[0]


def counts(table: pd.DataFrame) -> dict:
    """n_jobs; n_finished; n_pruned; n_failed (on their config or otherwise); n_stopped: the rest
    (stopped by a signal, stale, or still running), which `resume_sweep=` continues."""
    states = table["status"]
    finished, pruned = int((states == FINISHED).sum()), int(table[PRUNED_AT].notna().sum())
    failed = int(states.isin([RunState.FAILED.value, RunState.FAILED_ON_CONFIG.value]).sum())
    return {
        "n_jobs": len(table),
        "n_finished": finished,
        "n_pruned": pruned,
        "n_failed": failed,
        "n_stopped": len(table) - finished - pruned - failed,
    }


def seed_groups(table: pd.DataFrame, keys: List[str]) -> pd.DataFrame:
    """One row per configuration apart from `seed`: `config` (named after `keys`, the settings that
    differ), n, then mean and std of each SEED_METRICS, best mean val_acc first. FINISHED jobs only;
    std is NaN for a single seed."""
    finished = table[table["status"] == FINISHED].copy()
    finished["config"] = [
        run_name([f"{k}={row[k]}" for k in keys], only=keys) or "(all runs)" for _, row in finished.iterrows()
    ]
    grouped = finished.groupby("config", sort=False)[list(SEED_METRICS)]
    out = grouped.agg(["count", "mean", "std"])
    out.columns = [f"{metric}_{stat}" for metric, stat in out.columns]
    out.insert(0, "n", grouped.size())
    out = out.drop(columns=[f"{m}_count" for m in SEED_METRICS]).reset_index()
    return out.sort_values(f"{SEED_METRICS[0]}_mean", ascending=False, na_position="last", ignore_index=True)
