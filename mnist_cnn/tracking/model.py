"""The model a run logs, in two forms in one MLflow model folder, and how this package loads it.

For MLflow (`mlflow.pytorch.load_model`, `mlflow models serve`), it is a `torch.fx` GraphModule,
pickled. The pickle names only torch classes (the forward is stored as generated source), so it
loads without this package; unlike torch.export's pt2 module, whose `.eval()` and `.train()` raise
NotImplementedError in torch 2.14, it is a plain `nn.Module`. But loading a pickle runs whatever
code it names: anyone who can write to the store could put code there.

So beside its MLmodel the folder also holds what rebuilds the model: `network.json` (the
`model.network.Network` it was built from) and `state_dict.pt` (its weights: tensors only, read
with `torch.load(weights_only=True)`). `load_model` reads those two files alone, builds the network
again and loads the weights into it, and refuses a model that lacks them rather than unpickle it;
it works with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false, which makes MLflow refuse the pickle.
"""

import copy
import logging
import pickle
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

from mnist_cnn.errors import ModelError
from mnist_cnn.model.network import Network
from mnist_cnn.names import EPOCH, NETWORK_FILE, STATE_DICT_FILE

# mlflow warns about pickle on every save; the module docstring and docs/after-training.md say it once.
PICKLE_ADVICE_LOGGER = "mlflow.pytorch"


def log_model(
    client: MlflowClient,
    run: Run,
    model: torch.nn.Module,
    network: Network,
    epoch: Optional[int] = None,
) -> str:
    """Log an fp32 CPU copy of `model`, built from `network` (the caller's model stays where it is),
    as a logged model of `run`; it takes float images in [0, 1] of shape (N, *network.in_shape) and
    returns logits. The final model is named `model`; with `epoch`, it is `epoch_N`, at that step.
    Everything goes through `client`, never MLflow's global tracking URI or experiment. Returns the
    model's URI (`models:/m-...`)."""
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *network.in_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, network.num_classes))]),
    )
    fp32 = copy.deepcopy(model).cpu().float().eval()
    logged = client.create_logged_model(
        run.info.experiment_id,
        name="model" if epoch is None else f"epoch_{epoch}",
        source_run_id=run.info.run_id,
        tags=resolve_tags({EPOCH: str(epoch)} if epoch is not None else {}),
        params=dict(run.data.params),
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model"
            _save(torch.fx.symbolic_trace(fp32), path, logged, run.info.run_id, signature, network.in_shape)
            (path / NETWORK_FILE).write_text(network.to_json())
            torch.save(fp32.state_dict(), path / STATE_DICT_FILE)
            client.log_model_artifacts(logged.model_id, str(path))
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


def load_model(location: str, folder: str, tracking_uri: str, label: str) -> torch.nn.Module:
    """The model whose MLflow folder is at `location` (an artifact location or a local folder),
    built again from its network.json with its state_dict.pt read `weights_only`, in eval mode on the
    CPU; only those two files are downloaded (into `folder`), and its pickle never is. ModelError,
    naming `label`, for a model without them or with weights that are not plain tensors; MLflow's
    own errors for a location it cannot read."""
    found = {
        Path(f.path).name for f in mlflow.artifacts.list_artifacts(artifact_uri=location, tracking_uri=tracking_uri)
    }
    if not found:
        raise FileNotFoundError(f"no model files at {location}")
    if not {NETWORK_FILE, STATE_DICT_FILE} <= found:
        raise ModelError(
            f"{label}: has no {NETWORK_FILE} and {STATE_DICT_FILE} (logged by another tool or an older mnist_cnn), so "
            "it cannot be loaded without running its pickle, which could run any code; train it again with this "
            "version, or, if you trust everyone who can write to this store, load it with mlflow.pytorch.load_model."
        )
    local = {
        name: Path(
            mlflow.artifacts.download_artifacts(f"{location}/{name}", dst_path=folder, tracking_uri=tracking_uri)
        )
        for name in (NETWORK_FILE, STATE_DICT_FILE)
    }
    try:
        module = Network.from_json(local[NETWORK_FILE].read_text()).build()
    except (ValueError, TypeError) as e:  # a ConfigError too: layers that do not fit
        raise ModelError(f"{label}: its {NETWORK_FILE} does not describe a network ({e}); train it again.") from e
    try:
        weights = torch.load(local[STATE_DICT_FILE], map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message suggests weights_only=False: never for a file from a store
        raise ModelError(
            f"{label}: its {STATE_DICT_FILE} holds objects other than tensors, which are refused because loading them "
            "could run code; train it again with this version."
        ) from e
    module.load_state_dict(weights)
    return module.eval()
