"""A run's life in MLflow: opened after every check has passed, written to through a `Tracker`,
and always ended: FINISHED, KILLED (Ctrl-C or SIGTERM, with the command that resumes it) or
FAILED (the error kept as a tag). While it trains, a heartbeat marks it alive; a run whose process
vanished (SIGKILL, power loss, a server that went away) shows as STALE and can be resumed.

Everything goes through `MlflowClient` with an explicit run id (no fluent "active run"), so the
heartbeat thread and the training thread never share hidden state. Every value written passes
through `redact` first.
"""

import functools
import logging
import shlex
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking.context.registry import resolve_tags
from omegaconf import DictConfig, OmegaConf

from mnist_cnn import interrupts, names
from mnist_cnn.config.job import job_overrides, sweep_info
from mnist_cnn.config.keys import config_sha256, flatten
from mnist_cnn.config.schema import first_objective
from mnist_cnn.data.splits import Split, batches
from mnist_cnn.errors import CheckpointError, Pruned, TrackingError, TrackingLostError
from mnist_cnn.model import onnx_file
from mnist_cnn.tracking import model as logged
from mnist_cnn.tracking import store
from mnist_cnn.tracking.environment import environment_tags
from mnist_cnn.tracking.heartbeat import Heartbeat, alive_tags, claim_holds, claim_value, now_tag
from mnist_cnn.tracking.inputs import dataset_input
from mnist_cnn.tracking.links import model_version_url, resume_command, run_url
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.run_names import run_name

log = logging.getLogger(__name__)


def _when_tracking(method: Callable) -> Callable:
    """A Tracker method that does nothing when tracking is disabled."""

    @functools.wraps(method)
    def maybe(self: "Tracker", *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs) if self.client is not None else None

    return maybe


class Tracker:
    """Writes to one run; with tracking disabled (`client` None) every call does nothing. A store
    that stops answering (after the bounded retries of tracking.store) raises TrackingLostError."""

    def __init__(self, client: Optional[MlflowClient], run_id: Optional[str], uri: str = ""):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.logged_steps: set = set()

    @_when_tracking
    def log_epoch(
        self, metrics: Dict[str, float], epoch: int, checkpoint: Path, model_id: Optional[str] = None
    ) -> None:
        """The epoch's metrics with a heartbeat in one request (linked to the epoch's model, if one was
        logged), then its checkpoint."""
        if epoch in self.logged_steps:  # a resume replays an epoch whose metrics made it before the stop
            self.set_tags({names.HEARTBEAT: now_tag()})
        else:
            self.log_metrics(metrics, epoch, model_id)
        self.call(self.client.log_artifact, self.run_id, str(checkpoint), names.CHECKPOINT_FOLDER)

    @_when_tracking
    def log_metrics(self, metrics: Dict[str, float], step: int, model_id: Optional[str] = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step, model_id=model_id) for key, value in metrics.items()]
        self.call(self.client.log_batch, self.run_id, metrics=batch, tags=[RunTag(names.HEARTBEAT, now_tag())])

    @_when_tracking
    def reconcile(self, metrics: Dict[str, float], epoch: int) -> None:
        """On resume from `epoch`'s checkpoint, make the run's history what an uninterrupted run's
        would be: log that epoch if the store missed it (it died just after the checkpoint was
        saved), and skip later epochs it already has (a stop before their checkpoint was uploaded)."""
        key = next(iter(metrics))
        self.logged_steps = {m.step for m in self.call(self.client.get_metric_history, self.run_id, key)}
        if epoch not in self.logged_steps:
            self.log_metrics(metrics, epoch)

    @_when_tracking
    def log_report(self, report: Dict[str, Any], figures: Dict[str, Any], folder: str = "") -> None:
        """A classification report as `classification_report.json` and its figures (file name ->
        matplotlib Figure) under `plots/`, both inside `folder`."""
        self.call(self.client.log_dict, self.run_id, report, f"{folder}classification_report.json")
        for name, figure in figures.items():
            self.call(self.client.log_figure, self.run_id, figure, f"{folder}plots/{name}")

    @_when_tracking
    def set_tags(self, tags: Dict[str, str]) -> None:
        self.call(self.client.log_batch, self.run_id, tags=as_tags(tags))

    @_when_tracking
    def log_model(
        self,
        model: torch.nn.Module,
        in_shape: tuple,
        num_classes: int,
        register_as: Optional[str] = None,
        register_from: str = "last",
    ) -> None:
        """Log the final model (tagged `model_uri`); with `register_as`, also register it, or the best
        epoch kept (`register_from=best`), as a new version of that model."""

        def upload() -> None:
            run = self.client.get_run(self.run_id)
            # MLflow files a model under the active experiment, not its run's: `runs:/ID/model` finds it only there.
            mlflow.set_experiment(experiment_id=run.info.experiment_id)
            uri = logged.log_model(self.run_id, model, in_shape, num_classes)
            self.set_tags({names.MODEL_URI: uri})
            if register_as:
                source = uri if register_from == "last" else run.data.tags[names.BEST_MODEL_URI]
                version = logged.register(self.client, source, register_as, run)
                log.info(
                    "registered as models:/%s/%s: %s",
                    register_as,
                    version,
                    model_version_url(self.uri, register_as, version),
                )

        self.call(upload)

    @_when_tracking
    def log_onnx(self, model: torch.nn.Module, test: Split, classes: Tuple[str, ...]) -> None:
        """The model as ONNX too (tracking.log_onnx), as mnist-cnn-export writes it: checked against
        PyTorch on the first images of the `test` split, then logged as the run's `model.onnx`."""
        images, _ = next(batches(test, onnx_file.COMPARED))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / names.ONNX_FILE
            exported = onnx_file.export(model, images, path, classes, f"runs:/{self.run_id}/model")
            self.call(self.client.log_artifact, self.run_id, str(path))
        log.info("%s: max logit difference from PyTorch %.1e", names.ONNX_FILE, exported.max_difference)

    @_when_tracking
    def log_epoch_model(self, model: torch.nn.Module, in_shape: tuple, num_classes: int, epoch: int) -> str:
        """Log this epoch's model (trainer.keep_best) unless a resumed run already has it; returns its id."""

        def upload() -> str:
            run = self.client.get_run(self.run_id)
            if epoch in self.logged_steps:  # only an epoch a resume replays can have its model already
                for kept in logged.epoch_models(self.client, run):
                    if kept.tags[names.EPOCH] == str(epoch):
                        return kept.model_id
            mlflow.set_experiment(experiment_id=run.info.experiment_id)
            return logged.log_model(self.run_id, model, in_shape, num_classes, epoch).removeprefix("models:/")

        return self.call(upload)

    @_when_tracking
    def keep_best(self, k: int, objective: DictConfig) -> None:
        """Delete all but the `k` best epoch models by the first objective; tag the run with the best one."""
        metric, direction = first_objective(objective)

        def prune() -> None:
            models = logged.epoch_models(self.client, self.client.get_run(self.run_id))
            ranked = logged.rank(models, metric, direction == "maximize")
            for doomed in ranked[k:]:
                logged.delete_model(self.client, doomed)
            if ranked:
                self.set_tags(
                    {
                        names.BEST_EPOCH: ranked[0].tags[names.EPOCH],
                        names.BEST_MODEL_URI: f"models:/{ranked[0].model_id}",
                    }
                )

        self.call(prune)

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """`fn(*args)` against the store: a store that stopped answering becomes TrackingLostError."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever the store raised, the run cannot be recorded
            if not store.is_store_failure(e):
                raise
            raise TrackingLostError(
                f"the MLflow store at {redact(self.uri)} stopped answering ({store.describe(e)})"
            ) from e


@dataclass
class Opening:
    """What a new run records before its first epoch."""

    params: Dict[str, Any]  # besides the flattened config
    tags: Dict[str, str]  # fingerprints, device, ...
    dataset: Dict[str, Any]  # name, folder, sizes (per split), sha256: the run's input


@contextmanager
def tracked_run(cfg: DictConfig, opening: Opening, run_id: Optional[str], checkpoint: Path) -> Iterator[Tracker]:
    """Open a run for `cfg` (or reopen run `run_id`), yield its Tracker, and always end it.

    `checkpoint` is the local file the loop rewrites each epoch: the messages for a stopped run or a
    lost store point at it. With tracking disabled nothing is recorded and a stop says how to
    resume from that file.
    """
    if not cfg.tracking.enabled:
        try:
            yield Tracker(None, None)
        except KeyboardInterrupt:
            _stopped_untracked(checkpoint)
            raise
        return
    client = store.connect(cfg.tracking.uri)
    opened, background = None, ExitStack()  # heartbeat and system metrics: stopped before the final status
    try:
        with interrupts.shielded(), store.quick():  # a signal now waits until the run is recorded
            opened = _open(client, cfg, opening, run_id)
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
                "KILLED",
                {names.INTERRUPTED: "stopped by Ctrl-C or SIGTERM", names.RESUME_COMMAND: command},
            )
            log.warning("run %s KILLED after its last complete epoch; continue it with:\n  %s", opened, command)
        raise
    except Pruned as e:
        background.close()
        end_run(client, opened, "KILLED", {names.PRUNED_AT: str(e.epoch)})
        log.info("run %s pruned after epoch %d: its siblings did better", opened, e.epoch)
        raise
    except TrackingLostError as e:
        raise TrackingLostError(_lost_message(e, opened, checkpoint, cfg.tracking.uri)) from e
    except BaseException as e:
        if opened:
            background.close()
            end_run(client, opened, "FAILED", {names.ERROR: error_tag(e)})
            e.mlflow_run_id = opened  # lets a sweep job know its failure is already recorded
        raise
    else:
        background.close()
        end_run(client, opened, "FINISHED", {})
        experiment_id = client.get_run(opened).info.experiment_id
        print(
            f"MLflow run {opened} finished in experiment {cfg.tracking.experiment!r} ({redact(cfg.tracking.uri)}):\n"
            f"  {run_url(cfg.tracking.uri, experiment_id, opened)}{_ui_hint(cfg.tracking.uri)}",
            flush=True,
        )
    finally:
        background.close()


def _ui_hint(tracking_uri: str) -> str:
    return (
        ""
        if tracking_uri.startswith(("http://", "https://"))
        else "  (for this local store, start the UI with `make ui`)"
    )


def _system_metrics(run_id: str, uri: str, resumed: bool) -> Any:
    """MLflow's own monitor of CPU, memory, disk and network (and GPUs with nvidia-ml-py), every 10 s."""
    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=uri)
    monitor.start()
    return monitor


def _open(client: MlflowClient, cfg: DictConfig, opening: Opening, run_id: Optional[str]) -> str:
    """Create the run (params, config.yaml, dataset) or set run `run_id` RUNNING again; tag it as alive here."""
    try:
        return _record_start(client, cfg, opening, run_id)
    except Exception as e:  # noqa: BLE001 - sorted below
        if not store.is_store_failure(e):
            raise
        raise TrackingError(
            f"could not record the run in the MLflow store at {redact(cfg.tracking.uri)} ({store.describe(e)}); "
            "run the same command again once it answers."
        ) from e


def _new_run(client: MlflowClient, cfg: DictConfig) -> str:
    """A RUNNING run in `tracking.experiment`, named after the job's overrides, a child of its sweep."""
    sweep = sweep_info()
    name = cfg.tracking.run_name or run_name(job_overrides(), only=sweep.get("swept"))
    parent = {names.PARENT_RUN: sweep["parent_run_id"]} if sweep.get("parent_run_id") else {}
    experiment_id = store.experiment_id(client, cfg.tracking.experiment)
    return client.create_run(experiment_id, run_name=name, tags=resolve_tags(parent)).info.run_id


def claim(client: MlflowClient, run_id: str) -> None:
    """Make this process the one that continues run `run_id`, or raise CheckpointError naming the one
    that does. Each process that continues a run logs the next param `mnist_cnn.continued_by.N`;
    MLflow's store refuses a second value for a param, so of two processes that start together
    exactly one gets N. A later one is refused while the holder of the latest N may still be at it."""
    run = client.get_run(run_id)
    claims = sorted((int(k.rpartition(".")[2]), v) for k, v in run.data.params.items() if k.startswith(names.CLAIM))
    if claims and claim_holds(claims[-1][1], run):
        raise _taken(run_id, claims[-1][1])
    key = f"{names.CLAIM}{claims[-1][0] + 1 if claims else 1}"
    try:
        client.log_param(run_id, key, claim_value())
    except MlflowException as e:
        holder = client.get_run(run_id).data.params.get(key)
        if holder is None:
            raise
        raise _taken(run_id, holder) from e


def _taken(run_id: str, holder: str) -> CheckpointError:
    host, pid, since = (holder.split(" ") + ["?", "?", "?"])[:3]
    error = CheckpointError(
        f"run {run_id} is being continued by another process (pid {pid} on {host}, since {since}); only one "
        "process may continue a run. Let it finish, or stop it and resume again."
    )
    error.mlflow_run_id = run_id  # a sweep job must not record a FAILED run of its own for this
    return error


def _record_start(client: MlflowClient, cfg: DictConfig, opening: Opening, run_id: Optional[str]) -> str:
    if run_id is None:
        run_id = _new_run(client, cfg)
        tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        flat = {**flatten(tree), **opening.params}
        params_batch = [Param(k, redact(str(v))) for k, v in flat.items()]
        for start in range(0, len(params_batch), 100):  # MLflow takes at most 100 params a request
            client.log_batch(run_id, params=params_batch[start : start + 100])
        client.log_text(run_id, redact(OmegaConf.to_yaml(cfg, resolve=True)), names.CONFIG_FILE)
        _log_dataset(client, run_id, dataset_input(**opening.dataset))
        tags = {**opening.tags, names.HYDRA_OVERRIDES: shlex.join(job_overrides())}
    else:
        claim(client, run_id)
        client.update_run(run_id, status="RUNNING")
        tags = {**opening.tags, names.RESUME_OVERRIDES: shlex.join(job_overrides())}  # the run's own overrides stay
    all_tags = {**tags, **environment_tags(), **alive_tags(cfg.tracking.heartbeat_s)}
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


def end_run(client: MlflowClient, run_id: str, status: str, tags: Dict[str, str]) -> None:
    """Record the final status, shielded from signals and with fast-failing requests (seconds)."""
    with interrupts.shielded(then_stop=status == "FINISHED"), store.quick():
        try:
            if tags:
                client.log_batch(run_id, tags=as_tags(tags))
            if status == "FINISHED":  # a resumed run: what its interruption left no longer applies
                for key in set(names.STOPPED) & set(client.get_run(run_id).data.tags) - set(tags):
                    client.delete_tag(run_id, key)
            client.set_terminated(run_id, status)
        except Exception as e:  # noqa: BLE001 - the store is gone: the heartbeat will show the run STALE
            log.warning(
                "could not mark run %s %s (%s); mnist-cnn-runs will show it as STALE", run_id, status, store.describe(e)
            )


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


def as_tags(tags: Dict[str, Any]) -> List[RunTag]:
    return [RunTag(key, redact(str(value))) for key, value in tags.items()]


def error_tag(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")[:5000]  # MLflow caps tag values


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    """A sweep job that failed before its run was opened (bad config or data) still gets a FAILED run,
    with its config's fingerprint: a resumed sweep finds it by that and does not run it again."""
    client = store.connect(cfg.tracking.uri)
    run_id = _new_run(client, cfg)
    tags = {
        names.ERROR: error_tag(error),
        names.HYDRA_OVERRIDES: shlex.join(job_overrides()),
        names.CONFIG_SHA256: config_sha256(cfg),
    }
    end_run(client, run_id, "FAILED", tags)
