"""Finding what a command names: a run and its logged config, a run free to be resumed and its last
checkpoint, the run and classes behind a model.

A model is named as MLflow names it (`runs:/ID/model`, `models:/NAME/3`, `models:/NAME@champion`,
`models:/NAME/latest`, `models:/m-...`, a folder) or by the id of the run that logged it; that run's
`config.yaml` says which dataset it was trained on, and so what its classes are called.
"""

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version

from mnist_cnn import names
from mnist_cnn.data.datasets import dataset_info
from mnist_cnn.errors import CheckpointError, DataError, ModelError
from mnist_cnn.tracking import store
from mnist_cnn.tracking.heartbeat import silence_s, stale_after_s
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.states import RunState, state_of

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
FORMS = "a run id, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS"  # how commands name a model


@dataclass(frozen=True)
class ModelRef:
    uri: str  # what mlflow.pytorch.load_model takes
    run_id: Optional[str]  # the run that logged it; None for a model no run logged (a folder)
    registered: bool  # named through the model registry


def find_run(client: MlflowClient, run_id: str, where: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise ModelError(f"{where}: no run {run_id} in this tracking store; check the id and the tracking URI.") from e


def run_config(client: MlflowClient, run_id: str, folder: str, where: str) -> Dict[str, Any]:
    """The resolved config run `run_id` logged as config.yaml."""
    try:
        path = client.download_artifacts(run_id, names.CONFIG_FILE, folder)
    except (MlflowException, OSError) as e:
        raise ModelError(
            f"{where}: run {run_id} has no {names.CONFIG_FILE} artifact; it was not made by mnist-cnn-train."
        ) from e
    return yaml.safe_load(Path(path).read_text())


def resumable_run(uri: str, run_id: str, where: str) -> MlflowClient:
    """A client for `uri`, once run `run_id` is known to be there and free to continue: not FINISHED,
    and not RUNNING with a live process behind it."""
    client = store.connect(uri)
    run = find_run(client, run_id, where)
    state = state_of(run)
    if state is RunState.FINISHED:
        raise CheckpointError(f"{where}: run {run_id} already FINISHED; there is nothing to resume.")
    if state is RunState.RUNNING:
        tags = run.data.tags
        raise CheckpointError(
            f"{where}: run {run_id} is RUNNING and its heartbeat is {silence_s(tags, run.info.start_time):.0f} s old: "
            f"a process (pid {tags.get(names.PID, '?')} on {tags.get(names.HOST, '?')}) may still be training it. "
            "Stop that "
            f"process first; a run whose heartbeat is older than {stale_after_s(tags):.0f} s counts as stale and can "
            "be resumed."
        )
    return client


def fetch_run(client: MlflowClient, run_id: str, folder: str, where: str) -> Tuple[Dict[str, Any], Optional[Path]]:
    """Run `run_id`'s config tree, and its last checkpoint downloaded into `folder` (None when no
    epoch had completed)."""
    tree = run_config(client, run_id, folder, where)
    if names.CHECKPOINT not in {a.path for a in client.list_artifacts(run_id, names.CHECKPOINT_FOLDER)}:
        return tree, None  # stopped before its first epoch ended: start again in the same run
    return tree, Path(client.download_artifacts(run_id, names.CHECKPOINT, folder))


def resolve_model(client: MlflowClient, spec: str) -> ModelRef:
    """The model URI and source run of `spec`, through MLflow's own resolution of models:/ URIs."""
    if not spec.strip():
        raise ModelError(f"{spec!r}: no model named; give {FORMS}.")
    uri = f"runs:/{spec}/model" if RUN_ID.match(spec) else spec
    if uri.startswith("runs:/"):
        return ModelRef(uri, uri[len("runs:/") :].split("/", 1)[0], registered=False)
    if not uri.startswith("models:/"):
        return ModelRef(uri, None, registered=False)
    name = uri[len("models:/") :]
    if not {"/", "@"} & set(name) and _registered(client, name):  # MLflow would look for a logged model `name`
        raise ModelError(
            f"{spec}: names the registered model {name!r} but no version; add /VERSION "
            f"(models:/{name}/1), /latest or @ALIAS."
        )
    try:
        found = get_model_name_and_version(client, uri)  # a version, @alias, /latest, /Stage, or m-<id>
        if len(found) == 1:  # models:/m-<id>: a logged model, not a registered one
            return ModelRef(uri, client.get_logged_model(found[0]).source_run_id, registered=False)
        version = client.get_model_version(*found)
        run_id = version.run_id or (
            client.get_logged_model(version.model_id).source_run_id if version.model_id else None
        )
    except MlflowException as e:
        raise ModelError(
            f"{spec}: not in the tracking store {redact(client.tracking_uri)} ({str(e).splitlines()[0][:200]})."
        ) from e
    return ModelRef(uri, run_id, registered=True)


def _registered(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def class_names(client: MlflowClient, run_id: Optional[str], n_classes: int) -> Tuple[str, ...]:
    """The classes of the dataset run `run_id` trained on, or the class indices where there is no
    such run or config, or its dataset has another number of classes than the model."""
    indices = tuple(str(i) for i in range(n_classes))
    if run_id is None:
        return indices
    try:
        with tempfile.TemporaryDirectory() as folder:
            classes = dataset_info(run_config(client, run_id, folder, run_id)["data"]["name"]).classes
    except (ModelError, KeyError, TypeError, DataError):  # not a run mnist-cnn-train made
        return indices
    return classes if len(classes) == n_classes else indices
