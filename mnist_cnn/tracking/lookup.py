"""Finding what a command names: a run and its logged config, a sweep's jobs, a run's last
checkpoint, the run and classes behind a model.

A model is named as MLflow names it (`runs:/ID/model`, `models:/NAME/3`, `models:/NAME@champion`,
`models:/NAME/latest`, `models:/m-...`, a folder) or by the id of the run that logged it; that run's
`config.yaml` says which dataset it was trained on, and so what its classes are called.
"""

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version

from mnist_cnn import names
from mnist_cnn.data.datasets import dataset_info
from mnist_cnn.errors import DataError, ModelError
from mnist_cnn.names import MODEL_FORMS
from mnist_cnn.tracking.environment import parse_environment
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.states import RunState, mlflow_status

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ModelRef:
    uri: str  # runs:/ID/model, models:/..., or a path or URI of the model's files
    run_id: Optional[str]  # the run that logged it; None for a model no run logged (a folder)
    registered: bool  # named through the model registry


def find_run(client: MlflowClient, run_id: str, where: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise ModelError(f"{where}: no run {run_id} in this tracking store; check the id and the tracking URI.") from e


def run_config(client: MlflowClient, run_id: str, folder: str, where: str) -> Dict[str, Any]:
    """The resolved config run `run_id` logged as config.yaml; ModelError for a run that has none
    (a sweep's parent: naming it, and what to give instead)."""
    try:
        path = client.download_artifacts(run_id, names.CONFIG_FILE, folder)
    except (MlflowException, OSError) as e:
        require_trained(client.get_run(run_id), where)
        raise ModelError(
            f"{where}: run {run_id} has no {names.CONFIG_FILE} artifact; it was not made by mnist-cnn-train."
        ) from e
    return yaml.safe_load(Path(path).read_text())


def run_environment(client: MlflowClient, run_id: str, folder: str) -> Optional[Dict[str, str]]:
    """{package: version} from the environment.txt run `run_id` logged as it started, or None for a
    run that logged none (one from before runs logged it)."""
    if names.ENVIRONMENT_FILE not in {f.path for f in client.list_artifacts(run_id)}:
        return None
    return parse_environment(Path(client.download_artifacts(run_id, names.ENVIRONMENT_FILE, folder)).read_text())


def require_trained(run: Run, where: str) -> None:
    """ModelError when `run` is a sweep's parent, which trains nothing itself: give one of its jobs."""
    if names.SWEEP_ARGV in run.data.tags:
        run_id = run.info.run_id
        raise ModelError(
            f"{where}: run {run_id} is a sweep's parent run, which trains no model itself; give the id of one "
            f"of its jobs (its child runs: mnist-cnn-runs --sweep {run_id})."
        )


def require_model(client: MlflowClient, ref: ModelRef, where: str) -> None:
    """ModelError, before any download, when `ref` names the final model of a run that logged none:
    a sweep's parent, a run with tracking.log_model=false, or one stopped before its end."""
    if ref.run_id is None or ref.uri != f"runs:/{ref.run_id}/model":
        return  # a registered or logged model, or a folder: MLflow's lookup says whether it exists
    run = find_run(client, ref.run_id, where)
    require_trained(run, where)
    if names.MODEL_URI not in run.data.tags:
        raise ModelError(
            f"{where}: this run logged no model (it was stopped before its end, or trained with "
            "tracking.log_model=false); give a FINISHED run that logged one."
        )


def children(client: MlflowClient, parent_run_id: str) -> List[Run]:
    """The jobs of a sweep (the children of its parent run), in the order they started."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    found = client.search_runs([experiment_id], f"tags.{names.PARENT_RUN} = '{parent_run_id}'", max_results=50_000)
    return sorted(found, key=lambda run: run.info.start_time)


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
        raise ModelError(f"{spec!r}: no model named; give {MODEL_FORMS}.")
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


def newest_model(client: MlflowClient) -> Optional[str]:
    """What a command that takes models shows when given none: the newest version of the newest
    registered model (`models:/NAME/N`), else the newest finished run that logged a model (its id);
    None in a store with neither."""
    registered = client.search_registered_models(max_results=1000)  # stores order them by update, not creation
    for newest in sorted(registered, key=lambda m: m.creation_timestamp, reverse=True)[:1]:
        versions = client.search_model_versions(f"name = '{newest.name}'", order_by=["version_number DESC"])
        if versions:
            return f"models:/{newest.name}/{versions[0].version}"
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        f"attributes.status = '{mlflow_status(RunState.FINISHED)}' and tags.{names.MODEL_URI} LIKE '%'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def model_files(client: MlflowClient, ref: ModelRef) -> str:
    """Where the files of model `ref` are (an artifact location MLflow downloads from), found through
    `client`: MLflow's own download of a runs:/ or models:/ URI looks the model up in the process's
    global tracking and registry URIs, which this project never sets."""
    if ref.uri.startswith("runs:/"):
        run_id, _, name = ref.uri[len("runs:/") :].partition("/")
        run = client.get_run(run_id)
        logged = client.search_logged_models([run.info.experiment_id], filter_string=f"name = '{name}'")
        mine = sorted((m for m in logged if m.source_run_id == run_id), key=lambda m: m.creation_timestamp)
        return mine[-1].artifact_location if mine else f"{run.info.artifact_uri}/{name}"
    if ref.uri.startswith("models:/"):
        found = get_model_name_and_version(client, ref.uri)
        if len(found) == 1:
            return client.get_logged_model(found[0]).artifact_location
        return client.get_model_version_download_uri(*found)
    return ref.uri


def _registered(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def logged_config(client: MlflowClient, run_id: str) -> Optional[Dict[str, Any]]:
    """The config run `run_id` logged, or None for a run that logged none (not one of mnist-cnn-train's)."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            return run_config(client, run_id, folder, run_id)
    except ModelError:
        return None


def class_names(config: Optional[Dict[str, Any]], n_classes: int) -> Tuple[str, ...]:
    """The classes of the dataset a run's `config` trained on, or the class indices where there is
    no such config, or its dataset has another number of classes than the model gives."""
    indices = tuple(str(i) for i in range(n_classes))
    try:
        classes = dataset_info(config["data"]["name"]).classes if config else indices
    except (KeyError, TypeError, DataError):  # not a config mnist-cnn-train wrote
        return indices
    return classes if len(classes) == n_classes else indices
