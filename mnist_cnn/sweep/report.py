"""What a sweep's parent run reports when the sweep ends: counts, the best job, seeds grouped,
`sweep/summary.csv`, the figures, and the champion model when `tracking.register_as` is set."""

import logging
import time
from typing import Any, Dict, List

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Run
from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.config.schema import objectives as config_objectives
from mnist_cnn.sweep import plots, tables
from mnist_cnn.sweep.tables import Objective
from mnist_cnn.tracking import store
from mnist_cnn.tracking.links import model_version_url
from mnist_cnn.tracking.lookup import children
from mnist_cnn.tracking.registry import register

log = logging.getLogger(__name__)


def report(
    client: MlflowClient, cfg: DictConfig, run_id: str, swept: List[str], tags: Dict[str, str], crowning: bool
) -> Dict[str, Any]:
    """Log the counts, best job, seed groups, summary.csv and figures, then register the champion if
    `crowning`; add the best job and the champion (or why it could not be registered) to `tags`;
    returns the metrics logged."""
    jobs = children(client, run_id)
    objectives = config_objectives(cfg.objective)
    metric = objectives[0][0]
    table = tables.jobs_table(jobs, swept, [m for m, _ in objectives], _restored(client, jobs))
    summary: Dict[str, Any] = tables.counts(table)
    best = tables.best_job(table, objectives)
    if best is not None:
        summary[f"best_{metric}"] = float(best[metric])
        tags |= {names.BEST_RUN_NAME: best["name"], names.BEST_RUN_ID: best["run_id"]}
        if len(objectives) > 1:
            tags[names.CHAMPION_RULE] = champion_rule(objectives)
    if "seed" in swept:
        summary |= _log_seed_groups(client, run_id, table, [k for k in swept if k != "seed"])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
    client.log_text(run_id, table.to_csv(index=False), "sweep/summary.csv")
    client.log_figure(run_id, plots.parallel_coordinates(table, swept, objectives), "sweep/parallel_coordinates.png")
    client.log_figure(run_id, _pareto(client.get_run(run_id), table, objectives), "sweep/pareto.png")
    if best is not None and cfg.tracking.register_as:  # last: a registry that refuses loses none of the above
        if crowning:
            tags |= _crowned(client, cfg, next(job for job in jobs if job.info.run_id == best["run_id"]))
        else:  # the alias may be what users are served: not the best of half a sweep
            log.info("the sweep was stopped: no champion registered until resume_sweep=%s ends it", run_id)
    return summary


def _crowned(client: MlflowClient, cfg: DictConfig, best: Run) -> Dict[str, str]:
    """`crown`'s tags, or the store's failure as the tag `champion_error` (the rest of the report stands)."""
    try:
        return crown(client, cfg, best)
    except Exception as e:  # noqa: BLE001 - MLflow, SQLAlchemy or the network: kept as the parent's tag
        if not store.is_store_failure(e):
            raise
        return {names.CHAMPION_ERROR: store.describe(e)}


def _restored(client: MlflowClient, jobs: List[Run]) -> Dict[str, Dict[str, float]]:
    """For each job that ended with an earlier epoch's weights (trainer.restore_best), that epoch's
    per-epoch metrics: what its model scores, and what its sweeper was given."""
    restored = {}
    for job in jobs:
        epoch = job.data.tags.get(names.RESTORED_EPOCH)
        if epoch is not None:
            histories = {key: client.get_metric_history(job.info.run_id, key) for key in names.EPOCH_METRICS}
            restored[job.info.run_id] = {
                key: m.value for key, history in histories.items() for m in history if m.step == int(epoch)
            }
    return restored


def champion_rule(objectives: List[Objective]) -> str:
    """The rule that picks a multi-objective sweep's best job (tables.best_job), in words."""
    (first, direction), rest = objectives[0], [metric for metric, _ in objectives[1:]]
    return (
        f"the Pareto front's {'highest' if direction == 'maximize' else 'lowest'} {first}; "
        f"ties go to the better {', then '.join(rest)}"
    )


def _pareto(parent: Run, table: pd.DataFrame, objectives: List[Objective]) -> Any:
    """The first objective against the second (a single objective: against train time), with the
    Pareto front that an Optuna search tagged on the parent, or else the jobs table's own."""
    if len(objectives) == 1:
        objectives = [*objectives, (names.TRAIN_TIME, "minimize")]
    tagged = [key.removeprefix(names.PARETO_FRONT) for key in parent.data.tags if key.startswith(names.PARETO_FRONT)]
    return plots.pareto(table, objectives, table[table["run_id"].isin(tagged)] if tagged else None)


def crown(client: MlflowClient, cfg: DictConfig, best: Run) -> Dict[str, str]:
    """Register the best job's model (its last epoch, or its best with register_from=best) and point
    the alias `champion` at it; returns the parent's tags naming it."""
    name = cfg.tracking.register_as
    source = best.data.tags.get(names.BEST_MODEL_URI if cfg.tracking.register_from == "best" else names.MODEL_URI)
    if source is None:
        log.warning("the best job %s logged no model: no champion registered", best.info.run_id)
        return {}
    version = register(client, source, name, best)
    client.set_registered_model_alias(name, names.CHAMPION, version)
    url = model_version_url(cfg.tracking.uri, name, version)
    log.info(
        "champion: models:/%s@%s is version %s, from run %s: %s", name, names.CHAMPION, version, best.info.run_id, url
    )
    return {names.CHAMPION: f"models:/{name}/{version}", names.CHAMPION_URL: url}


def _log_seed_groups(client: MlflowClient, run_id: str, table: pd.DataFrame, keys: List[str]) -> Dict[str, float]:
    """Log the seed groups of a sweep over `seed`; returns n, mean and std of the best group (by
    mean val_acc) as metrics, e.g. `seeds_val_acc_mean`."""
    groups = tables.seed_groups(table, keys)
    client.log_text(run_id, groups.to_csv(index=False), "sweep/seed_groups.csv")
    if groups.empty:
        return {}
    best = groups.iloc[0]
    return {f"seeds_{key}": float(best[key]) for key in groups.columns if key != "config" and pd.notna(best[key])}
