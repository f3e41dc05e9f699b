"""Where a run starts: at epoch 1 in a new run, or where the run it continues stopped.

A job of a resumed sweep, or one that Slurm requeued, first looks for its earlier run
(sweep.restart): it may have nothing left to do, or continue that run.

`resume=RUN_ID` finds the run in `tracking.uri`, whatever experiment it is in. `resume=path/last.pt`
needs only the file (runs trained with tracking.enabled=false, or while the server was down): a
checkpoint carries its config and run id. A run stopped before its first epoch ended has no
checkpoint and starts again at epoch 1, in the same run.

The run keeps its own config, tracking settings included. Overrides on the resume command may
change the RUN_SETTINGS (where it reads and logs: data.root, tracking.*, ...); any other change is
refused, because the result would no longer be the run's. `tracking.uri` always comes from the
command: it is where the run is found and continued.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf

from mnist_cnn import names
from mnist_cnn.config.job import Outcome, job_overrides, slurm_restarts
from mnist_cnn.config.keys import is_run_setting, override_key
from mnist_cnn.config.schema import typed_config
from mnist_cnn.engine.checkpoint import load_checkpoint
from mnist_cnn.errors import CheckpointError, ConfigError, ModelError
from mnist_cnn.sweep.restart import job_start, starts_again
from mnist_cnn.tracking.lookup import fetch_run, resumable_run


@dataclass
class StartPoint:
    cfg: DictConfig
    checkpoint: Optional[Dict[str, Any]]  # None: start at epoch 1
    run_id: Optional[str]  # the MLflow run to continue; None for a new run or an untracked one


def where_to_start(cfg: DictConfig, world_size: int = 1) -> Tuple[Optional[StartPoint], Optional[Outcome]]:
    """The run to train or continue, with its config and checkpoint; or how a sweep's job that is
    already done ended."""
    if cfg.resume_sweep or slurm_restarts():
        cfg, done = job_start(cfg) if starts_again(cfg) else (cfg, None)
        if done is not None:
            return None, done
    start = start_point(cfg, job_overrides()) if cfg.resume else StartPoint(cfg, None, None)
    if world_size > 1 and start.cfg.trainer.strategy != "ddp":  # a resumed run keeps its own strategy
        raise ConfigError(
            f"resume={cfg.resume}: that run trained with trainer.strategy=single; continue it without torchrun."
        )
    return start, None


def start_point(cfg: DictConfig, overrides: List[str]) -> StartPoint:
    """The config, checkpoint and run that `cfg.resume` continues, with `overrides` checked."""
    target, where = str(cfg.resume), f"resume={cfg.resume}"
    if _is_path(target):
        checkpoint = load_checkpoint(Path(target).expanduser())
        if "config" not in checkpoint:
            raise CheckpointError(
                f"checkpoint {target} carries no config (an older mnist_cnn wrote it); resume its run id instead."
            )
        tree, run_id = yaml.safe_load(checkpoint["config"]), checkpoint.get("run_id")
    else:
        client = resumable_run(cfg.tracking.uri, target, where)
        with tempfile.TemporaryDirectory() as tmp:
            tree, path = fetch_run(client, target, tmp, where)
            checkpoint, run_id = (
                (load_checkpoint(path, f"run {target} artifact {names.CHECKPOINT}") if path else None),
                target,
            )
    run_cfg = typed_config(tree)
    refused = [o for o in overrides if not is_run_setting(override_key(o)) and _differs(override_key(o), cfg, run_cfg)]
    if refused:
        raise ConfigError(
            f"{where}: {' '.join(refused)} would change the result of the run being resumed, which keeps "
            "its own config. Drop these overrides, or start a new run with them."
        )
    settings = [override_key(o) for o in overrides if is_run_setting(override_key(o))]
    for key in settings + ["tracking.uri", "resume"]:
        if _has(cfg, key):  # hydra.* overrides configure the launcher, not the run
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False)
    if _is_path(target) and run_id is not None and run_cfg.tracking.enabled:  # the file's run must be free too
        try:
            resumable_run(run_cfg.tracking.uri, run_id, where)
        except ModelError as e:
            raise ModelError(f"{e} Or continue without tracking: tracking.enabled=false.") from e
    return StartPoint(run_cfg, checkpoint, run_id if run_cfg.tracking.enabled else None)


def _is_path(target: str) -> bool:
    """A checkpoint file rather than an MLflow run id (32 hex digits)."""
    return target.endswith(".pt") or "/" in target or Path(target).expanduser().exists()


_MISSING = object()


def _has(cfg: DictConfig, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING


def _differs(key: str, cfg: DictConfig, run_cfg: DictConfig) -> bool:
    ours = OmegaConf.select(cfg, key, default=_MISSING)
    return ours is _MISSING or ours != OmegaConf.select(run_cfg, key, default=_MISSING)
