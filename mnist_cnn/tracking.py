"""Everything the framework records in MLflow, behind one small `Tracker`.

A run is opened only after the config, model and data have been checked, and always ends with a
final status: FINISHED, KILLED (Ctrl-C or SIGTERM) or FAILED (any other error, kept as a tag), so no
run is ever left RUNNING.
"""

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from omegaconf import DictConfig, OmegaConf

from mnist_cnn.errors import TrackingError
from mnist_cnn.sweep import job_overrides, run_name, sweep_info


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


def record_failed_job(cfg: DictConfig, error: Exception) -> None:
    """A sweep job that failed before its run was opened (bad config or data) still gets a FAILED run."""
    _connect(cfg.tracking.uri, cfg.tracking.experiment)
    sweep = sweep_info()
    name = run_name(job_overrides(), only=sweep.get("swept"))
    with mlflow.start_run(run_name=name, parent_run_id=sweep.get("parent_run_id")):
        mlflow.set_tags({"error": f"{type(error).__name__}: {error}"[:5000], "hydra_overrides": " ".join(job_overrides())})
        mlflow.end_run("FAILED")


def open_parent_run(tcfg: DictConfig, name: str, tags: Dict[str, str]) -> str:
    """Create the RUNNING parent run of a sweep (and the store, if new); returns its id."""
    _connect(tcfg.uri, tcfg.experiment)
    experiment = mlflow.get_experiment_by_name(tcfg.experiment)
    return MlflowClient().create_run(experiment.experiment_id, run_name=name, tags=tags).info.run_id


def close_parent_run(tcfg: DictConfig, run_id: str, objective: DictConfig, status: str) -> Dict[str, Any]:
    """Record the sweep's job count, failures and best child on the parent run, then end it."""
    mlflow.set_tracking_uri(tcfg.uri)
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{run_id}'", max_results=50_000)
    key = objective.metric
    scored = [c for c in children if c.info.status == "FINISHED" and key in c.data.metrics]
    summary: Dict[str, Any] = {"n_jobs": len(children), "n_failed": sum(c.info.status != "FINISHED" for c in children)}
    if scored:
        pick = max if objective.direction == "maximize" else min
        best = pick(scored, key=lambda c: c.data.metrics[key])
        summary.update({f"best_{key}": best.data.metrics[key], "best_run_id": best.info.run_id})
        client.set_tag(run_id, "best_run_name", best.info.run_name)
        client.set_tag(run_id, "best_run_id", best.info.run_id)
    client.log_batch(run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in summary.items() if k != "best_run_id"])
    client.set_terminated(run_id, status)
    return summary


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
    overrides, sweep = job_overrides(), sweep_info()
    name = cfg.tracking.run_name or run_name(overrides, only=sweep.get("swept"))
    run = mlflow.start_run(run_name=name, parent_run_id=sweep.get("parent_run_id"))
    try:
        params = flatten(OmegaConf.to_container(cfg, resolve=True))
        mlflow.log_params({**params, **extra_params})
        tags = {**tags, "git_commit": git_commit(), "torch_version": torch.__version__, "hydra_overrides": " ".join(overrides)}
        mlflow.set_tags(tags)
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield Tracker(enabled=True)
    except KeyboardInterrupt:
        mlflow.set_tag("interrupted", "stopped by Ctrl-C or SIGTERM")
        mlflow.end_run("KILLED")
        raise
    except BaseException as e:
        mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:5000])
        mlflow.end_run("FAILED")
        e.mlflow_run_id = run.info.run_id  # lets a sweep job know its failure is already recorded
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
