"""Finding what a command names: a run and its logged config, the run and data behind a model URI.

A model is named as MLflow names it (`runs:/ID/model`, `models:/NAME/3`, `models:/NAME@champion`,
`models:/m-...`) or by the id of the run that logged it; the run's `config.yaml` says which
dataset it was trained on.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from mnist_cnn.errors import ModelError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ModelRef:
    uri: str  # what mlflow.pytorch.load_model takes
    run_id: Optional[str]  # the run that logged it
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
    """The model URI and source run of `spec`: a run id or an MLflow model URI."""
    if RUN_ID.match(spec):
        spec = f"runs:/{spec}/model"
    if spec.startswith("runs:/"):
        return ModelRef(spec, spec[len("runs:/") :].split("/", 1)[0], registered=False)
    if not spec.startswith("models:/"):
        raise ModelError(f"{spec!r}: name a model by run id, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS.")
    name = spec[len("models:/") :]
    try:
        if name.startswith("m-"):  # a logged model's own id
            return ModelRef(spec, client.get_logged_model(name).source_run_id, registered=False)
        if "@" in name:
            version = client.get_model_version_by_alias(*name.split("@", 1))
        else:
            model, _, number = name.partition("/")
            version = client.get_model_version(model, number)
    except MlflowException as e:
        raise ModelError(f"{spec}: not in this tracking store's registry ({str(e).splitlines()[0][:200]}).") from e
    return ModelRef(spec, version.run_id, registered=True)
