"""Everything the framework records in MLflow, behind one small `Tracker`.

A run is opened only after the config, model and data have been checked, and always ends with a
final status: FINISHED, KILLED (Ctrl-C or SIGTERM) or FAILED (any other error, kept as a tag), so no
run is ever left RUNNING.
"""

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from omegaconf import DictConfig, OmegaConf

from mnist_cnn.errors import TrackingError


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """{"model": {"layers": [{"type": "conv"}]}} -> {"model.layers.0.type": "conv"}; None values dropped."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {} if tree is None else {prefix: tree}
    out: Dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def git_commit() -> str:
    """The commit of the checkout this package runs from, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class Tracker:
    """Logs to the active MLflow run; with tracking disabled every call does nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        if self.enabled:
            mlflow.log_metrics(metrics, step=step)

    def log_artifact(self, path: Path, artifact_dir: Optional[str] = None) -> None:
        if self.enabled:
            mlflow.log_artifact(str(path), artifact_dir)

    def log_model(self, model: torch.nn.Module, in_shape: tuple, num_classes: int) -> None:
        """Log the fp32 CPU model; it takes float images in [0, 1] of shape (N, *in_shape)."""
        if not self.enabled:
            return
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *in_shape))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
        )
        # pt2 (torch.export) needs no Python class to load; a batch of 2 keeps the batch size dynamic.
        example = np.zeros((2, *in_shape), dtype=np.float32)
        mlflow.pytorch.log_model(
            model.cpu().float().eval(),
            name="model",
            signature=signature,
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # skips MLflow's slow inference
        )


@contextmanager
def tracked_run(cfg: DictConfig, extra_params: Dict[str, Any], tags: Dict[str, str]) -> Iterator[Tracker]:
    """Open an MLflow run for `cfg` (or nothing when tracking.enabled is false) and close it properly."""
    if not cfg.tracking.enabled:
        yield Tracker(enabled=False)
        return
    _connect(cfg.tracking.uri, cfg.tracking.experiment)
    run = mlflow.start_run(run_name=cfg.tracking.run_name)
    try:
        params = flatten(OmegaConf.to_container(cfg, resolve=True))
        mlflow.log_params({**params, **extra_params})
        mlflow.set_tags({**tags, "git_commit": git_commit(), "torch_version": torch.__version__})
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield Tracker(enabled=True)
    except KeyboardInterrupt:
        mlflow.set_tag("interrupted", "stopped by Ctrl-C or SIGTERM")
        mlflow.end_run("KILLED")
        raise
    except BaseException as e:
        mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")
    print(f"MLflow run {run.info.run_id} in experiment {cfg.tracking.experiment!r} at {cfg.tracking.uri}")


def _connect(uri: str, experiment: str) -> None:
    """Point MLflow at `uri` and select `experiment`, turning any failure into a TrackingError."""
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
    except Exception as e:  # MLflow raises MlflowException, OSError, SQLAlchemy errors, ...
        raise TrackingError(
            f"tracking.uri={uri!r}: cannot open the MLflow store ({type(e).__name__}: {str(e)[:300]}). "
            "Use sqlite:///PATH.db for a local store (the default is sqlite:///mlflow.db), or the "
            "http(s):// address of a running MLflow server; tracking.enabled=false trains without tracking."
        ) from e
