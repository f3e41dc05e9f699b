"""Where a run starts: at epoch 1 in a new run, or where the run it continues stopped.

A job that restarts (runner.restart: `resume=`, `resume_sweep=`, a Slurm requeue) is resolved here,
once: a job of a resumed sweep or a requeued one first looks for its earlier run, which may have
nothing left to do, or which it continues like `resume=` that run.

`resume=RUN_ID` finds the run in `tracking.uri`, whatever experiment it is in. `resume=path/last.pt`
needs only the file (runs trained with tracking.enabled=false, or while the server was down): a
checkpoint carries its config and run id. A run stopped before its first epoch ended has no
checkpoint and starts again at epoch 1, in the same run.

The run keeps its own config, tracking settings included. Overrides on the resume command may
change the RUN_SETTINGS (where it reads and logs: data.root, tracking.*, ...); any other change is
refused, because the result would no longer be the run's. `tracking.uri` always comes from the
command: it is where the run is found and continued.
"""

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import yaml
from omegaconf import DictConfig, OmegaConf

from mnist_cnn import names
from mnist_cnn.config.job import JobContext
from mnist_cnn.config.keys import is_run_setting, override_key
from mnist_cnn.config.schema import typed_config
from mnist_cnn.engine.checkpoint import load_checkpoint
from mnist_cnn.errors import CheckpointError, ConfigError, ModelError
from mnist_cnn.runner.outcome import Outcome
from mnist_cnn.runner.restart import Kind, Restart, free_run, outcome_of
from mnist_cnn.tracking import store
from mnist_cnn.tracking.lookup import fetch_run
from mnist_cnn.tracking.states import state_of

log = logging.getLogger(__name__)


@dataclass
class StartPoint:
    cfg: DictConfig
    checkpoint: Optional[Dict[str, Any]]  # None: start at epoch 1
    run_id: Optional[str]  # the MLflow run to continue; None for a new run or an untracked one
    restart: Optional[Restart] = None  # what made the job continue a run; None: a new run


def where_to_start(cfg: DictConfig, ctx: JobContext, world_size: int = 1) -> Union[StartPoint, Outcome]:
    """The run to train or continue, with its config and checkpoint; or how the earlier run of a
    job that restarts ended, when it left nothing to train."""
    restart = Restart.of(cfg, ctx)
    if restart is not None and restart.kind is not Kind.RESUME:
        earlier = restart.earlier_run(store.connect(cfg.tracking.uri), cfg)
        if earlier is not None and restart.leaves(state_of(earlier)):
            log.info("run %s did this job already (%s): not run again", earlier.info.run_id, state_of(earlier).value)
            return outcome_of(earlier)
        if earlier is not None:
            log.info("%s: continuing run %s (%s)", restart.kind.value, earlier.info.run_id, state_of(earlier).value)
            cfg = cfg.copy()
            cfg.resume, cfg.resume_sweep = earlier.info.run_id, None
    start = start_point(cfg, ctx.overrides) if cfg.resume else StartPoint(cfg, None, None)
    start.restart = restart if cfg.resume else None
    if world_size > 1 and start.cfg.trainer.strategy != "ddp":  # a resumed run keeps its own strategy
        raise ConfigError(
            f"resume={cfg.resume}: that run trained with trainer.strategy=single; continue it without torchrun."
        )
    return start


def start_point(cfg: DictConfig, overrides: Sequence[str]) -> StartPoint:
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
        client = free_run(cfg.tracking.uri, target, where)
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
            free_run(run_cfg.tracking.uri, run_id, where)
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
