"""The models a run keeps in MLflow, without loading them: registering one as a version of a named
model, the per-epoch models of trainer.keep_best (ranked, and deleted with their files). No torch
here: a sweep's launching process registers its champion without it."""

from typing import List, Optional

from mlflow import MlflowClient
from mlflow.entities import LoggedModel, Run
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mnist_cnn.names import EPOCH, EPOCH_METRICS, FINGERPRINTS, TEST_ACC, WEIGHTS_SHA256


def register(client: MlflowClient, model_uri: str, name: str, run: Run) -> str:
    """Register logged model `model_uri` (`models:/m-...`) of `run` as a version of model `name`
    (created if new), tagged with the run's fingerprints and described by its test accuracy; an
    epoch's model (trainer.keep_best) keeps its own `weights_sha256`, and when those are not the
    weights the run tested, the description says so instead. Returns the version. A model already
    registered under `name` keeps its version."""
    model = client.get_logged_model(model_uri.removeprefix("models:/"))
    location = model.artifact_location
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.source in (location, model_uri):
            return version.version
    try:
        client.create_registered_model(name)
    except MlflowException as e:  # registered before, by an earlier run or a parallel job
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    tags = {k: v for k, v in run.data.tags.items() if k in FINGERPRINTS} | {"run_id": run.info.run_id}
    tags |= {k: v for k, v in model.tags.items() if k == WEIGHTS_SHA256}
    # The model's files as the source, its run as the link: MLflow's sqlite registry would look a
    # models:/ source up in the store of the process's global tracking URI, which this project never sets.
    # The model's id too: a server that serves artifacts (mlflow-artifacts:/) accepts a source only
    # inside the artifact folder of the run or logged model the request names.
    version = client.create_model_version(name, location, run_id=run.info.run_id, tags=tags, model_id=model.model_id)
    client.update_model_version(name, version.version, _description(model, run, tags.get(WEIGHTS_SHA256)))
    return version.version


def _description(model: LoggedModel, run: Run, weights: Optional[str]) -> str:
    """The run's test accuracy, when `model` holds the weights it tested; else the epoch's own metrics."""
    if weights == run.data.tags.get(WEIGHTS_SHA256):
        return f"{TEST_ACC} {run.data.metrics.get(TEST_ACC, float('nan')):.4f}, from run {run.info.run_id}"
    scores = ", ".join(f"{m.key} {m.value:.4f}" for m in model.metrics or [] if m.key in EPOCH_METRICS)
    return (
        f"epoch {model.tags.get(EPOCH)} of run {run.info.run_id}: {scores}; not scored on the test split (the run "
        "tested other weights than these)"
    )


def epoch_models(client: MlflowClient, run: Run) -> List[LoggedModel]:
    """The per-epoch models run `run` still keeps (trainer.keep_best)."""
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    return [m for m in found if EPOCH in m.tags]


def delete_model(client: MlflowClient, model: LoggedModel) -> None:
    """Delete a logged model and its files (MLflow's delete alone keeps the files until `mlflow gc`)."""
    get_artifact_repository(model.artifact_location).delete_artifacts()
    client.delete_logged_model(model.model_id)
