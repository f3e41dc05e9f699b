"""Everything the framework records in MLflow: runs (behind one small `Tracker`), sweep parent
runs, and the config and checkpoint a resumed run continues from.

A run is opened only after the config, model and data have been checked, and always ends with a
final status: FINISHED, KILLED (Ctrl-C or SIGTERM, with the command that resumes it) or FAILED (any
other error, kept as a tag), so no run is ever left RUNNING.
"""

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from omegaconf import DictConfig, OmegaConf

from mnist_cnn import repro
from mnist_cnn.checkpoint import load_checkpoint
from mnist_cnn.config import Config
from mnist_cnn.errors import CheckpointError, ConfigError, TrackingError
from mnist_cnn.sweep import job_overrides, run_name, sweep_info

log = logging.getLogger(__name__)


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
    mlflow.start_run(run_name=name, parent_run_id=sweep.get("parent_run_id"))
    mlflow.set_tags({"error": _error_tag(error), "hydra_overrides": " ".join(job_overrides())})
    mlflow.end_run("FAILED")


def _error_tag(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:5000]  # MLflow caps tag values


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


class Tracker:
    """Logs to the active MLflow run; with tracking disabled every call does nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        """One batched, asynchronous call; ending the run waits until everything is written."""
        if self.enabled:
            mlflow.log_metrics(metrics, step=step, synchronous=False)

    def set_tags(self, tags: Dict[str, str]) -> None:
        if self.enabled:
            mlflow.set_tags(tags)

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
    """Open an MLflow run for `cfg`, or reopen run `cfg.resume` (nothing when tracking.enabled is
    false), and always close it: FINISHED, KILLED with the command that resumes it, or FAILED."""
    if not cfg.tracking.enabled:
        yield Tracker(enabled=False)
        return
    _connect(cfg.tracking.uri, cfg.tracking.experiment)
    overrides, sweep = job_overrides(), sweep_info()
    if cfg.resume:
        run = mlflow.start_run(run_id=cfg.resume)  # back to RUNNING; params and config.yaml are already there
    else:
        name = cfg.tracking.run_name or run_name(overrides, only=sweep.get("swept"))
        run = mlflow.start_run(run_name=name, parent_run_id=sweep.get("parent_run_id"))
    try:
        if not cfg.resume:
            mlflow.log_params({**flatten(OmegaConf.to_container(cfg, resolve=True)), **extra_params})
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        commit, dirty = repro.git_state()
        versions = {f"version.{k}": v for k, v in repro.package_versions().items()}
        mlflow.set_tags({**tags, **versions, "git_commit": commit, "git_dirty": str(dirty),
                         "torch_version": torch.__version__, "hydra_overrides": " ".join(overrides)})
        yield Tracker(enabled=True)
    except KeyboardInterrupt:
        command = f"mnist-cnn-train resume={run.info.run_id} tracking.uri={cfg.tracking.uri}"
        mlflow.set_tags({"interrupted": "stopped by Ctrl-C or SIGTERM", "resume_command": command})
        mlflow.end_run("KILLED")
        log.warning("run %s KILLED after its last complete epoch; continue it with: %s", run.info.run_id, command)
        raise
    except BaseException as e:
        mlflow.set_tag("error", _error_tag(e))
        mlflow.end_run("FAILED")
        e.mlflow_run_id = run.info.run_id  # lets a sweep job know its failure is already recorded
        raise
    mlflow.end_run("FINISHED")
    print(f"MLflow run {run.info.run_id} in experiment {cfg.tracking.experiment!r} at {cfg.tracking.uri}")


# What a resume command may change: where the run reads and logs, not what it computes.
ALLOWED_ON_RESUME = ("resume", "tracking.", "data.root", "data.download", "trainer.progress", "trainer.device")


def resume_point(cfg: DictConfig) -> Tuple[DictConfig, Dict[str, Any]]:
    """The own config and last checkpoint of run `cfg.resume`, for `mnist-cnn-train resume=RUN_ID`."""
    _connect(cfg.tracking.uri, cfg.tracking.experiment)
    where = f"resume={cfg.resume}"
    try:
        run = MlflowClient().get_run(cfg.resume)
    except MlflowException as e:
        raise CheckpointError(f"{where}: no such run in {cfg.tracking.uri}; check the run id and tracking.uri.") from e
    if run.info.status == "FINISHED":
        raise CheckpointError(f"{where}: the run already FINISHED; there is nothing to resume.")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config_path = mlflow.artifacts.download_artifacts(run_id=cfg.resume, artifact_path="config.yaml", dst_path=tmp)
            ckpt_path = mlflow.artifacts.download_artifacts(run_id=cfg.resume, artifact_path="checkpoints/last.pt", dst_path=tmp)
        except (MlflowException, OSError) as e:
            raise CheckpointError(
                f"{where}: the run has no config.yaml or checkpoints/last.pt artifact (it stopped before its first "
                "epoch ended, or was not made by mnist-cnn-train); start a new run instead."
            ) from e
        checkpoint = load_checkpoint(Path(ckpt_path))
        run_cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(config_path))
    refused = [o for o in job_overrides() if _changes_result(o, cfg, run_cfg)]
    if refused:
        raise ConfigError(
            f"{where}: {' '.join(refused)} would change the result of the run being resumed, which keeps its own "
            "config. Drop these overrides, or start a new run with them."
        )
    for key in ("tracking", "data.root", "data.download", "trainer.progress", "trainer.device", "resume"):
        OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False)
    return run_cfg, checkpoint


def _changes_result(override: str, cfg: DictConfig, run_cfg: DictConfig) -> bool:
    key = override.lstrip("+~").partition("=")[0]
    if key.startswith(ALLOWED_ON_RESUME):
        return False
    missing = object()
    ours = OmegaConf.select(cfg, key, default=missing)
    return ours is missing or ours != OmegaConf.select(run_cfg, key, default=missing)


# For the first request only: MLflow's defaults retry an unreachable server for minutes.
FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def _connect(uri: str, experiment: str) -> None:
    """Point MLflow at `uri` and select `experiment`, turning any failure into a TrackingError
    within seconds (later requests keep MLflow's retries)."""
    saved = {key: os.environ.get(key) for key in FIRST_CONTACT}
    os.environ.update(FIRST_CONTACT)
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
    except Exception as e:  # MLflow raises MlflowException, OSError, SQLAlchemy errors, ...
        raise TrackingError(
            f"tracking.uri={uri!r}: cannot open the MLflow store ({type(e).__name__}: {str(e)[:300]}). "
            "Use sqlite:///PATH.db for a local store (the default is sqlite:///mlflow.db), or the "
            "http(s):// address of a running MLflow server; tracking.enabled=false trains without tracking."
        ) from e
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
