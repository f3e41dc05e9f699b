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
from typing import Optional

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Run
from mlflow.models import Model, ModelSignature
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types import Schema, TensorSpec

from mnist_cnn.names import EPOCH

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
