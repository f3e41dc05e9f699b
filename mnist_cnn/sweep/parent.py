"""The parent run of a sweep: opened (or continued, for resume_sweep) before its jobs, and closed
after them with the sweep's report: counts, the best job, seeds grouped, `sweep/summary.csv`, the
figures, and the champion model when `tracking.register_as` is set."""

import logging
import time
from typing import Any, Dict, List, Tuple

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Run
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.config.schema import objectives as config_objectives
from mnist_cnn.sweep import plots, tables
from mnist_cnn.sweep.tables import Objective
from mnist_cnn.tracking import store
from mnist_cnn.tracking.heartbeat import Heartbeat, alive_tags
from mnist_cnn.tracking.links import model_version_url, resume_command, run_url
from mnist_cnn.tracking.lookup import children
from mnist_cnn.tracking.model import register
from mnist_cnn.tracking.run import end_run
from mnist_cnn.tracking.states import RunState, mlflow_status
from mnist_cnn.tracking.tracker import as_tags

log = logging.getLogger(__name__)


def open_parent_run(cfg: DictConfig, name: str, tags: Dict[str, str]) -> Tuple[str, Heartbeat]:
    """Create the RUNNING parent run of a sweep (and the store, if new); returns its id and its
    running heartbeat (the launching process lives as long as the sweep)."""
    client = store.connect(cfg.tracking.uri)
    experiment_id = store.experiment_id(client, cfg.tracking.experiment)
    alive = alive_tags(cfg.tracking.heartbeat_s)
    run_id = client.create_run(experiment_id, run_name=name, tags=resolve_tags({**tags, **alive})).info.run_id
    return run_id, Heartbeat(client, run_id, cfg.tracking.heartbeat_s).start()


def tag_parent_run(cfg: DictConfig, run_id: str, tags: Dict[str, str]) -> None:
    store.connect(cfg.tracking.uri).log_batch(run_id, tags=as_tags(tags))


def continue_parent_run(cfg: DictConfig, run_id: str, tags: Dict[str, str]) -> Heartbeat:
    """Set a stopped sweep's parent RUNNING again, alive in this process (resume_sweep)."""
    client = store.connect(cfg.tracking.uri)
    client.update_run(run_id, status=mlflow_status(RunState.RUNNING))
    client.log_batch(run_id, tags=as_tags({**tags, **alive_tags(cfg.tracking.heartbeat_s)}))
    return Heartbeat(client, run_id, cfg.tracking.heartbeat_s).start()


def close_parent_run(cfg: DictConfig, run_id: str, state: RunState, swept: List[str]) -> Tuple[Dict[str, Any], str]:
    """Record the sweep's report on its parent run, crown the champion (not for a stopped sweep:
    `resume_sweep=` crowns it when the sweep ends), then end the run (even if the report fails);
    returns the summary and the parent's link in the UI."""
    client = store.connect(cfg.tracking.uri)
    tags: Dict[str, str] = (
        {names.RESUME_COMMAND: resume_command(run_id, cfg.tracking.uri, sweep=True)} if state.continuable else {}
    )
    try:
        summary = _report(client, cfg, run_id, swept, tags, crowning=not state.continuable)
    finally:
        end_run(client, run_id, state, tags)
    run = client.get_run(run_id)
    importances = {k: v for k, v in run.data.metrics.items() if k.startswith(names.IMPORTANCE)}  # an Optuna search's
    return {**summary, **importances, **tags}, run_url(cfg.tracking.uri, run.info.experiment_id, run_id)


def _report(
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
