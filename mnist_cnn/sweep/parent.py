"""The parent run of a sweep: opened (or continued, for resume_sweep) before its jobs, and closed
after them with the sweep's report (sweep.report). Neither torch nor pandas is imported here: the
launching process opens the parent within seconds."""

import logging
import time
from typing import Any, Dict, List, Tuple

from mlflow.entities import Metric
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.tracking import store
from mnist_cnn.tracking.ending import as_tags, end_run
from mnist_cnn.tracking.heartbeat import Heartbeat, alive_tags
from mnist_cnn.tracking.links import resume_command, run_url, ui_hint
from mnist_cnn.tracking.lookup import children
from mnist_cnn.tracking.states import RunState, mlflow_status

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


def fixed_costs(client: Any, run_id: str, started: float) -> Dict[str, float]:
    """Log, and return, the sweep's own seconds outside its jobs: from the command's start
    (`started`, Unix seconds) to its first job's, and from its last job's end to now. Only this
    command's jobs count: a resumed sweep's earlier ones do not."""
    ours = [job for job in children(client, run_id) if float(job.data.tags.get(names.JOB_STARTED, 0)) >= started]
    ended = [job.info.end_time / 1000 for job in ours if job.info.end_time]
    if not ours or not ended:
        return {}
    first = min(float(job.data.tags[names.JOB_STARTED]) for job in ours)
    costs = {names.SWEEP_STARTUP: first - started, names.SWEEP_REPORT: time.time() - max(ended)}
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in costs.items()])
    return costs


def continue_parent_run(cfg: DictConfig, run_id: str, tags: Dict[str, str]) -> Heartbeat:
    """Set a stopped sweep's parent RUNNING again, alive in this process (resume_sweep)."""
    client = store.connect(cfg.tracking.uri)
    client.update_run(run_id, status=mlflow_status(RunState.RUNNING))
    client.log_batch(run_id, tags=as_tags({**tags, **alive_tags(cfg.tracking.heartbeat_s)}))
    return Heartbeat(client, run_id, cfg.tracking.heartbeat_s).start()


def close_parent_run(
    cfg: DictConfig, run_id: str, state: RunState, swept: List[str], started: float
) -> Tuple[Dict[str, Any], str]:
    """Record the sweep's report on its parent run, crown the champion (not for a stopped sweep:
    `resume_sweep=` crowns it when the sweep ends), then end the run (even if the report fails);
    returns the summary and the parent's link in the UI."""
    client = store.connect(cfg.tracking.uri)
    tags: Dict[str, str] = (
        {names.RESUME_COMMAND: resume_command(run_id, cfg.tracking.uri, sweep=True)} if state.continuable else {}
    )
    from mnist_cnn.sweep.report import report  # pandas and matplotlib: only as the sweep ends

    try:
        summary = report(client, cfg, run_id, swept, tags, crowning=not state.continuable)
        summary |= fixed_costs(client, run_id, started)  # after the report: its seconds are the sweep's too
    finally:
        end_run(client, run_id, state, tags)
    run = client.get_run(run_id)  # (an Optuna search printed its importances as it ended: search_report)
    link = run_url(cfg.tracking.uri, run.info.experiment_id, run_id) + ui_hint(cfg.tracking.uri)
    return {**summary, **tags}, link
