"""The model a run logs: a module that loads with `mlflow.pytorch.load_model` and nothing else.

It is logged as a `torch.fx` GraphModule, pickled. The pickle names only torch classes (the forward
is stored as generated source), so it loads without this package; unlike torch.export's pt2
module, whose `.eval()` and `.train()` raise NotImplementedError in torch 2.14, it is a plain
`nn.Module`. Loading a pickle runs code: load models only from a tracking store you trust
(MLflow refuses them with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).
"""

import copy
import logging
from typing import List, Optional

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, Run
from mlflow.models import ModelSignature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.types import Schema, TensorSpec

from mnist_cnn.names import EPOCH, FINGERPRINTS, TEST_ACC

# mlflow warns about pickle on every save; the module docstring and the README say it once.
PICKLE_ADVICE_LOGGER = "mlflow.pytorch"


def log_model(
    run_id: str, model: torch.nn.Module, in_shape: tuple, num_classes: int, epoch: Optional[int] = None
) -> str:
    """Log an fp32 CPU copy of `model` (the caller's model stays where it is); it takes float images
    in [0, 1] of shape (N, *in_shape) and returns logits. The final model is named `model`; with
    `epoch`, it is `epoch_N`, at that step. Returns the model's URI (`models:/m-...`)."""
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *in_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )
    graph = torch.fx.symbolic_trace(copy.deepcopy(model).cpu().float().eval())
    advice = logging.getLogger(PICKLE_ADVICE_LOGGER)
    level = advice.level
    advice.setLevel(logging.ERROR)
    try:
        return mlflow.pytorch.log_model(
            graph,
            name="model" if epoch is None else f"epoch_{epoch}",
            run_id=run_id,
            step=epoch or 0,
            tags={EPOCH: str(epoch)} if epoch is not None else None,
            signature=signature,
            input_example=np.zeros((2, *in_shape), dtype=np.float32),
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # skips MLflow's slow inference
        ).model_uri
    finally:
        advice.setLevel(level)


def register(client: MlflowClient, model_uri: str, name: str, run: Run) -> str:
    """Register `model_uri`, logged by `run`, as a version of model `name` (created if new), described
    by the run's test accuracy and tagged with its fingerprints; returns the version. A model
    already registered under `name` keeps its version."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.source == model_uri:
            return version.version
    tags = {k: v for k, v in run.data.tags.items() if k in FINGERPRINTS} | {"run_id": run.info.run_id}
    version = mlflow.register_model(model_uri, name, tags=tags)
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
