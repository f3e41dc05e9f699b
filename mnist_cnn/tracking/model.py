"""The model a run logs: a module that loads with `mlflow.pytorch.load_model` and nothing else.

It is logged as a `torch.fx` GraphModule, pickled. The pickle names only torch classes (the forward
is stored as generated source), so it loads without this package; unlike torch.export's pt2
module, whose `.eval()` and `.train()` raise NotImplementedError in torch 2.14, it is a plain
`nn.Module`. Loading a pickle runs code: load models only from a tracking store you trust
(MLflow refuses them with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).
"""

import copy
import logging
from typing import Dict

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

# mlflow warns about pickle on every save; the module docstring and the README say it once.
PICKLE_ADVICE_LOGGER = "mlflow.pytorch"


def log_model(run_id: str, model: torch.nn.Module, in_shape: tuple, num_classes: int) -> str:
    """Log an fp32 CPU copy of `model` (the caller's model stays where it is); it takes float images
    in [0, 1] of shape (N, *in_shape) and returns logits. Returns the model's URI."""
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
            name="model",
            run_id=run_id,
            signature=signature,
            input_example=np.zeros((2, *in_shape), dtype=np.float32),
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # skips MLflow's slow inference
        ).model_uri
    finally:
        advice.setLevel(level)


def register(client: MlflowClient, model_uri: str, name: str, description: str, tags: Dict[str, str]) -> str:
    """Register `model_uri` as a new version of model `name` (created if new); returns the version."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    client.update_model_version(name, version.version, description)
    return version.version
