"""A run's life in MLflow: opened after every check has passed, written to through a `Tracker`
(tracking.tracker), and always ended in a `RunState` (tracking.states): FINISHED, STOPPED (Ctrl-C
or SIGTERM, with the command that resumes it), PRUNED, or FAILED / FAILED_ON_CONFIG (the error kept
as a tag). While it trains, a heartbeat marks it alive; a run whose process vanished (SIGKILL,
power loss, a server that went away) shows as STALE and can be resumed.

Everything goes through `MlflowClient` with an explicit run id (no fluent "active run"), so the
heartbeat thread and the training thread never share hidden state. Every value written passes
through `redact` first.
"""

import logging
import shlex
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import DictConfig, OmegaConf

from mnist_cnn import interrupts, names
from mnist_cnn.config.job import JobContext
from mnist_cnn.config.keys import config_sha256, flatten
from mnist_cnn.errors import Pruned, TrackingError, TrackingLostError
from mnist_cnn.tracking import store
from mnist_cnn.tracking.claim import claim
from mnist_cnn.tracking.ending import as_tags, end_run, error_tag, failed_state
from mnist_cnn.tracking.environment import environment_tags, environment_text, installed_packages
from mnist_cnn.tracking.heartbeat import Heartbeat, alive_tags
from mnist_cnn.tracking.inputs import dataset_input
from mnist_cnn.tracking.links import resume_command, run_url, ui_hint
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.run_names import run_name
from mnist_cnn.tracking.states import RunState, mlflow_status
from mnist_cnn.tracking.tracker import Tracker

log = logging.getLogger(__name__)


@dataclass
class Opening:
    """What a new run records before its first epoch."""

    params: Dict[str, Any]  # besides the flattened config
    tags: Dict[str, str]  # fingerprints, device, ...
    dataset: Dict[str, Any]  # name, folder, sizes (per split), sha256: the run's input


@contextmanager
def tracked_run(
    cfg: DictConfig, ctx: JobContext, opening: Opening, run_id: Optional[str], checkpoint: Path
) -> Iterator[Tracker]:
    """Open a run for `cfg`, job `ctx`'s (or continue run `run_id`), yield its Tracker, and always end it.

    `checkpoint` is the local file the loop rewrites each epoch: the messages for a stopped run or a
    lost store point at it. With tracking disabled nothing is recorded and a stop says how to
    resume from that file, unless the job's folder is scratch that its end deletes (mnist-cnn-verify).
    """
    if not cfg.tracking.enabled:
        try:
            yield Tracker(None, None)
        except KeyboardInterrupt:
            if not ctx.scratch:
                _stopped_untracked(checkpoint)
            raise
        return
    client = store.connect(cfg.tracking.uri)
    opened, background = None, ExitStack()  # heartbeat and system metrics: stopped before the final status
    try:
        with interrupts.held():  # a signal now waits until the run is recorded
            opened = _open(client, cfg, ctx, opening, run_id)
        background.callback(Heartbeat(client, opened, cfg.tracking.heartbeat_s).start().stop)
        if cfg.tracking.system_metrics:
            background.callback(_system_metrics(opened, cfg.tracking.uri, resumed=run_id is not None).finish)
        yield Tracker(client, opened, cfg.tracking.uri)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: submitit ending a job it requeues for its time limit
        if opened:
            background.close()
            command = resume_command(opened, cfg.tracking.uri)
            end_run(
                client,
                opened,
                RunState.STOPPED,
                {names.INTERRUPTED: "stopped by Ctrl-C or SIGTERM", names.RESUME_COMMAND: command},
            )
            log.warning("run %s KILLED after its last complete epoch; continue it with:\n  %s", opened, command)
        raise
    except Pruned as e:
        background.close()
        end_run(client, opened, RunState.PRUNED, {names.PRUNED_AT: str(e.epoch)})
        log.info("run %s pruned after epoch %d: its siblings did better", opened, e.epoch)
        raise
    except TrackingLostError as e:
        raise TrackingLostError(_lost_message(e, opened, checkpoint, cfg.tracking.uri)) from e
    except BaseException as e:
        if opened:
            background.close()
            end_run(client, opened, failed_state(e), {names.ERROR: error_tag(e)})
        raise
    else:
        background.close()
        end_run(client, opened, RunState.FINISHED, {})
        experiment_id = client.get_run(opened).info.experiment_id
        print(
            f"MLflow run {opened} finished in experiment {cfg.tracking.experiment!r} ({redact(cfg.tracking.uri)}):\n"
            f"  {run_url(cfg.tracking.uri, experiment_id, opened)}{ui_hint(cfg.tracking.uri)}",
            flush=True,
        )
    finally:
        background.close()


def _system_metrics(run_id: str, uri: str, resumed: bool) -> Any:
    """MLflow's own monitor of CPU, memory, disk and network (and GPUs with nvidia-ml-py), every 10 s."""
    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


def _open(client: MlflowClient, cfg: DictConfig, ctx: JobContext, opening: Opening, run_id: Optional[str]) -> str:
    """Create the run (params, config.yaml, dataset) or set run `run_id` RUNNING again; tag it as alive here."""
    try:
        return _record_start(client, cfg, ctx, opening, run_id)
    except Exception as e:  # noqa: BLE001 - sorted below
        if not store.is_store_failure(e):
            raise
        raise TrackingError(
            f"could not record the run in the MLflow store at {redact(cfg.tracking.uri)} ({store.describe(e)}); "
            "run the same command again once it answers."
        ) from e


def _new_run(client: MlflowClient, cfg: DictConfig, ctx: JobContext) -> str:
    """A RUNNING run in `tracking.experiment`, named after the job's overrides, a child of its sweep."""
    swept = list(ctx.sweep.swept) if ctx.sweep else None
    name = cfg.tracking.run_name or run_name(list(ctx.overrides), only=swept)
    parent = {names.PARENT_RUN: ctx.sweep.parent_run_id} if ctx.sweep else {}
    experiment_id = store.experiment_id(client, cfg.tracking.experiment)
    return client.create_run(experiment_id, run_name=name, tags=resolve_tags(parent)).info.run_id


def _record_start(
    client: MlflowClient, cfg: DictConfig, ctx: JobContext, opening: Opening, run_id: Optional[str]
) -> str:
    if run_id is None:
        run_id = _new_run(client, cfg, ctx)
        tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        flat = {**flatten(tree), **opening.params}
        params_batch = [Param(k, redact(str(v))) for k, v in flat.items()]
        for start in range(0, len(params_batch), 100):  # MLflow takes at most 100 params a request
            client.log_batch(run_id, params=params_batch[start : start + 100])
        client.log_text(run_id, redact(OmegaConf.to_yaml(cfg, resolve=True)), names.CONFIG_FILE)
        # Once, as the run starts: a resumed run keeps it (mnist-cnn-verify retrains from the start's packages).
        client.log_text(run_id, environment_text(installed_packages()), names.ENVIRONMENT_FILE)
        _log_dataset(client, run_id, dataset_input(**opening.dataset))
        tags = {**opening.tags, names.HYDRA_OVERRIDES: shlex.join(ctx.overrides)}
    else:
        claim(client, run_id)
        client.update_run(run_id, status=mlflow_status(RunState.RUNNING))
        tags = {**opening.tags, names.RESUME_OVERRIDES: shlex.join(ctx.overrides)}  # the run's own overrides stay
    slurm = {names.SLURM_JOB: ctx.slurm.job_id} if ctx.slurm else {}  # a requeued job finds its run by it
    started = {names.JOB_STARTED: f"{ctx.began:.3f}"}
    all_tags = {**tags, **slurm, **started, **environment_tags(), **alive_tags(cfg.tracking.heartbeat_s)}
    client.log_batch(run_id, tags=as_tags(all_tags))
    return run_id


def _log_dataset(client: MlflowClient, run_id: str, dataset: Any, attempts: int = 3) -> None:
    """The run's dataset input. MLflow's stores look for the dataset and insert it when missing, so
    two jobs of a sweep that start together can both insert it, and one then fails on the table's
    unique key (seen with 4 Slurm jobs on the PostgreSQL server); asking again links the row the
    other job made."""
    for attempt in range(1, attempts + 1):
        try:
            return client.log_inputs(run_id, datasets=[dataset])
        except MlflowException as e:
            if attempt == attempts or not any(s in str(e) for s in ("duplicate key", "UNIQUE constraint failed")):
                raise
            time.sleep(0.2 * attempt)


def _lost_message(error: Exception, run_id: Optional[str], checkpoint: Path, uri: str) -> str:
    saved = (
        f"The last complete epoch is saved on this machine: {checkpoint}. When the store answers again, "
        f"continue the same run with:\n  {resume_command(str(checkpoint), uri)}"
        if checkpoint.is_file()
        else "No epoch had completed; run the same command again when the store answers."
    )
    state = f" Run {run_id} stays RUNNING until then (mnist-cnn-runs shows it as STALE)." if run_id else ""
    return f"{error}. Training stopped. {saved}{state}"


def _stopped_untracked(checkpoint: Path) -> None:
    if checkpoint.is_file():
        log.warning("stopped after the last complete epoch; continue with:\n  mnist-cnn-train resume=%s", checkpoint)


def record_failed_job(cfg: DictConfig, ctx: JobContext, error: Exception) -> None:
    """A sweep job that failed before its run was opened (bad config or data) still gets a FAILED run,
    with its config's fingerprint: a resumed sweep finds it by that and does not run it again."""
    client = store.connect(cfg.tracking.uri)
    run_id = _new_run(client, cfg, ctx)
    tags = {
        names.ERROR: error_tag(error),
        names.HYDRA_OVERRIDES: shlex.join(ctx.overrides),
        names.CONFIG_SHA256: config_sha256(cfg),
    }
    end_run(client, run_id, failed_state(error), tags)
