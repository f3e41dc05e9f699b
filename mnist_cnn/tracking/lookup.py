"""Finding what a command names: a run and its logged config, the run and classes behind a model.

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

from mnist_cnn.data.datasets import dataset_info
from mnist_cnn.errors import DataError, ModelError
from mnist_cnn.tracking.redact import redact

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
        path = client.download_artifacts(run_id, "config.yaml", folder)
    except (MlflowException, OSError) as e:
        raise ModelError(f"{where}: run {run_id} has no config.yaml artifact; it was not made by mnist-cnn-train.") from e
    return yaml.safe_load(Path(path).read_text())


def resolve_model(client: MlflowClient, spec: str) -> ModelRef:
    """The model URI and source run of `spec`, through MLflow's own resolution of models:/ URIs."""
    uri = f"runs:/{spec}/model" if RUN_ID.match(spec) else spec
    if uri.startswith("runs:/"):
        return ModelRef(uri, uri[len("runs:/") :].split("/", 1)[0], registered=False)
    if not uri.startswith("models:/"):
        return ModelRef(uri, None, registered=False)
    try:
        found = get_model_name_and_version(client, uri)  # a version, @alias, /latest, /Stage, or m-<id>
        if len(found) == 1:  # models:/m-<id>: a logged model, not a registered one
            return ModelRef(uri, client.get_logged_model(found[0]).source_run_id, registered=False)
        version = client.get_model_version(*found)
        run_id = version.run_id or (client.get_logged_model(version.model_id).source_run_id if version.model_id else None)
    except MlflowException as e:
        raise ModelError(f"{spec}: not in the tracking store {redact(client.tracking_uri)} ({str(e).splitlines()[0][:200]}).") from e
    return ModelRef(uri, run_id, registered=True)


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
