"""The model a run logs: a module that loads with `mlflow.pytorch.load_model` and nothing else.

It is logged as a `torch.fx` GraphModule, pickled. The pickle names only torch classes (the forward
is stored as generated source), so it loads without this package; unlike torch.export's pt2
module, whose `.eval()` and `.train()` raise NotImplementedError in torch 2.14, it is a plain
`nn.Module`. Loading a pickle runs code: load models only from a tracking store you trust
(MLflow refuses them with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).
"""

import copy
import logging
import tempfile
from pathlib import Path
from typing import List, Optional

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Run
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types import Schema, TensorSpec

from mnist_cnn.names import EPOCH, FINGERPRINTS, TEST_ACC

# mlflow warns about pickle on every save; the module docstring and the README say it once.
PICKLE_ADVICE_LOGGER = "mlflow.pytorch"


def log_model(
    client: MlflowClient,
    run: Run,
    model: torch.nn.Module,
    in_shape: tuple,
    num_classes: int,
    epoch: Optional[int] = None,
) -> str:
    """Log an fp32 CPU copy of `model` (the caller's model stays where it is) as a logged model of
    `run`; it takes float images in [0, 1] of shape (N, *in_shape) and returns logits. The final
    model is named `model`; with `epoch`, it is `epoch_N`, at that step. Everything goes through
    `client`, never MLflow's global tracking URI or experiment. Returns the model's URI
    (`models:/m-...`)."""
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *in_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )
    graph = torch.fx.symbolic_trace(copy.deepcopy(model).cpu().float().eval())
    logged = client.create_logged_model(
        run.info.experiment_id,
        name="model" if epoch is None else f"epoch_{epoch}",
        source_run_id=run.info.run_id,
        tags=resolve_tags({EPOCH: str(epoch)} if epoch is not None else {}),
        params=dict(run.data.params),
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            _save(graph, Path(folder) / "model", logged, run.info.run_id, signature, in_shape)
            client.log_model_artifacts(logged.model_id, str(Path(folder) / "model"))
        client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=epoch or 0)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}"


def _save(graph: torch.nn.Module, path: Path, logged: LoggedModel, run_id: str, signature, in_shape: tuple) -> None:
    """The model's MLflow folder: MLmodel, the pickled module, its requirements and an input example."""
    advice = logging.getLogger(PICKLE_ADVICE_LOGGER)
    level = advice.level
    advice.setLevel(logging.ERROR)
    try:
        mlflow.pytorch.save_model(
            graph,
            str(path),
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            ),
            signature=signature,
            input_example=np.zeros((2, *in_shape), dtype=np.float32),
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # skips MLflow's slow inference
        )
    finally:
        advice.setLevel(level)


def register(client: MlflowClient, model_uri: str, name: str, run: Run) -> str:
    """Register logged model `model_uri` (`models:/m-...`) of `run` as a version of model `name`
    (created if new), described by the run's test accuracy and tagged with its fingerprints;
    returns the version. A model already registered under `name` keeps its version."""
    model_id = model_uri.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.source in (location, model_uri):
            return version.version
    try:
        client.create_registered_model(name)
    except MlflowException as e:  # registered before, by an earlier run or a parallel job
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    tags = {k: v for k, v in run.data.tags.items() if k in FINGERPRINTS} | {"run_id": run.info.run_id}
    # The model's files as the source, its run as the link: MLflow's sqlite registry would look a
    # models:/ source up in the store of the process's global tracking URI, which this project never sets.
    version = client.create_model_version(name, location, run_id=run.info.run_id, tags=tags)
    description = f"{TEST_ACC} {run.data.metrics.get(TEST_ACC, float('nan')):.4f}, from run {run.info.run_id}"
    client.update_model_version(name, version.version, description)
    return version.version


def epoch_models(client: MlflowClient, run: Run) -> List[LoggedModel]:
    """The per-epoch models run `run` still keeps (trainer.keep_best)."""
    found = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    return [m for m in found if EPOCH in m.tags]


def rank(models: List[LoggedModel], metric: str, maximize: bool) -> List[LoggedModel]:
    """Best first by the value of `metric` linked to each model; ties go to the earlier epoch, and a
    model with no value comes last."""

    def key(model: LoggedModel) -> tuple:
        values = [m.value for m in model.metrics or [] if m.key == metric]
        score = (-values[-1] if maximize else values[-1]) if values else float("inf")
        return score, int(model.tags[EPOCH])

    return sorted(models, key=key)


def delete_model(client: MlflowClient, model: LoggedModel) -> None:
    """Delete a logged model and its files (MLflow's delete alone keeps the files until `mlflow gc`)."""
    get_artifact_repository(model.artifact_location).delete_artifacts()
    client.delete_logged_model(model.model_id)
