"""What a run logs, through its `Tracker`: each epoch's metrics and checkpoint, the test report and
its figures, the model (and its ONNX file), the models of the best epochs. A store that stops
answering becomes TrackingLostError (the run's lifecycle, tracking.run, says what to do then).

Every value written passes through `redact` first.
"""

import functools
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from mnist_cnn import names
from mnist_cnn.data.splits import Split, batches
from mnist_cnn.errors import TrackingLostError
from mnist_cnn.model import onnx_file
from mnist_cnn.model.network import Network
from mnist_cnn.tracking import model as logged
from mnist_cnn.tracking import registry, store
from mnist_cnn.tracking.ending import as_tags
from mnist_cnn.tracking.heartbeat import now_tag
from mnist_cnn.tracking.links import model_version_url
from mnist_cnn.tracking.redact import redact

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
    def log_report(self, report: Dict[str, Any], figures: Dict[str, bytes], folder: str = "") -> None:
        """A classification report as `classification_report.json` and its figures (file name -> PNG
        file) under `plots/`, both inside `folder`; the figures in one upload."""
        self.call(self.client.log_dict, self.run_id, report, f"{folder}classification_report.json")
        with tempfile.TemporaryDirectory() as plots:
            for name, data in figures.items():
                (Path(plots) / name).write_bytes(data)
            self.call(self.client.log_artifacts, self.run_id, plots, f"{folder}plots")

    @_when_tracking
    def set_tags(self, tags: Dict[str, str]) -> None:
        self.call(self.client.log_batch, self.run_id, tags=as_tags(tags))

    @_when_tracking
    def log_model(
        self,
        model: torch.nn.Module,
        network: Network,
        register_as: Optional[str] = None,
        register_from: str = "last",
    ) -> None:
        """Log the final model of `network` (tagged `model_uri`); with `register_as`, also register it, or the best
        epoch kept (`register_from=best`), as a new version of that model."""

        def upload() -> None:
            run = self.client.get_run(self.run_id)
            uri = logged.log_model(self.client, run, model, network)
            self.set_tags({names.MODEL_URI: uri})
            if register_as:
                source = uri if register_from == "last" else run.data.tags[names.BEST_MODEL_URI]
                version = registry.register(self.client, source, register_as, run)
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
    def log_epoch_model(self, model: torch.nn.Module, network: Network, epoch: int, weights_sha256: str) -> str:
        """Log this epoch's model (trainer.keep_best), tagged with its weights' fingerprint, unless a
        resumed run already has it; returns its id."""

        def upload() -> str:
            run = self.client.get_run(self.run_id)
            if epoch in self.logged_steps:  # only an epoch a resume replays can have its model already
                for kept in registry.epoch_models(self.client, run):
                    if kept.tags[names.EPOCH] == str(epoch):
                        return kept.model_id
            model_id = logged.log_model(self.client, run, model, network, epoch).removeprefix("models:/")
            self.client.set_logged_model_tags(model_id, {names.WEIGHTS_SHA256: weights_sha256})
            return model_id

        return self.call(upload)

    @_when_tracking
    def keep_best(self, k: int, ranked: List[int]) -> None:
        """Keep the models of the `k` best epochs (`ranked`: every epoch, best first) and delete the
        others; tag the run with the best one kept."""

        def prune() -> None:
            models = registry.epoch_models(self.client, self.client.get_run(self.run_id))
            place = {epoch: i for i, epoch in enumerate(ranked)}  # a model of an epoch not in ranked: last
            models.sort(key=lambda model: place.get(int(model.tags[names.EPOCH]), len(ranked)))
            for doomed in models[k:]:
                registry.delete_model(self.client, doomed)
            if models:
                self.set_tags(
                    {
                        names.BEST_EPOCH: models[0].tags[names.EPOCH],
                        names.BEST_MODEL_URI: f"models:/{models[0].model_id}",
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
