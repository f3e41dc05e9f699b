"""Hydra multirun -> one MLflow parent run with every job as its child.

`MlflowSweepCallback` runs in the launching process (registered in conf/config.yaml under
hydra.callbacks). Before any job starts it initialises the tracking store once, so parallel workers
never race on a fresh sqlite schema, and opens the parent run; its id is written into the sweep
folder with the swept keys, where every job finds them whatever launcher started it (local, joblib,
submitit). When the sweep ends it records the number of jobs, the failures and the best child, then
closes the parent.
"""

import atexit
import json
import logging
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
SWEEP_FILE = "mlflow_sweep.json"  # {"parent_run_id": ..., "swept": [keys the sweep varies]}

# Overrides that say where or how a run is recorded, not what it trains: left out of run names.
NOT_IN_NAMES = ("data.root", "data.download", "data.verify_checksums", "tracking.", "trainer.progress",
                "trainer.device", "trainer.limit_batches", "hparams_search", "hydra")
ALIASES = {"batch_size": "bs", "out_channels": "ch", "kernel_size": "k", "weight_decay": "wd", "out_features": "out"}


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_info() -> dict:
    """What the launching process wrote for this job's sweep; empty outside a tracked multirun."""
    path = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE if in_multirun() else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def worst(objective: DictConfig) -> float:
    """What a failed job returns to the sweeper: a value it accepts and never picks as the best."""
    return float("-inf") if objective.direction == "maximize" else float("inf")


def job_overrides() -> List[str]:
    """The command-line overrides of this run or job (`optimizer.lr=0.003`, ...)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(overrides: List[str], only: Optional[List[str]] = None) -> Optional[str]:
    """A short name from the overrides that change what is trained (or just the keys in `only`),
    e.g. `lr=0.003,bs=256`."""
    parts = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if (key in only) if only else not key.startswith(NOT_IN_NAMES):
            *path, leaf = key.split(".")
            layer = f"l{path[-1]}." if path and path[-1].isdigit() else ""
            parts.append(f"{layer}{ALIASES.get(leaf, leaf)}={_short(value)}")
    return ",".join(parts) or None


def _short(value: str) -> str:
    """0.0024713734184878826 -> 0.002471: Optuna's samples, readable in a run list."""
    try:
        return value if "." not in value and "e" not in value.lower() else f"{float(value):.4g}"
    except ValueError:
        return value


class MlflowSweepCallback(Callback):
    """Opens the parent run before the jobs of a multirun and summarises it after them."""

    def __init__(self) -> None:
        self.run_id: Optional[str] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.tracking.enabled:
            return
        from mnist_cnn import tracking  # MLflow is slow to import; only sweeps that track need it

        sweep_dir = Path(config.hydra.sweep.dir)
        sweeper = config.hydra.sweeper._target_.rsplit(".", 1)[-1]
        launcher = config.hydra.launcher._target_.rsplit(".", 1)[-1]
        grid = list(config.hydra.overrides.task)
        swept = [o.get_key_element() for o in OverridesParser.create().parse_overrides(grid) if o.is_sweep_override()]
        swept += list(config.hydra.sweeper.get("params") or {})  # Optuna's search space
        tags = {"sweeper": sweeper, "launcher": launcher, "sweep_overrides": " ".join(grid), "sweep_dir": str(sweep_dir)}
        self.run_id = tracking.open_parent_run(config.tracking, name=run_name(grid) or sweep_dir.name, tags=tags)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps({"parent_run_id": self.run_id, "swept": swept}))
        atexit.register(self._close, config, "KILLED")  # a sweep stopped by Ctrl-C never leaves it RUNNING

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close(config, "FINISHED")

    def _close(self, config: DictConfig, status: str) -> None:
        if self.run_id is None:
            return
        from mnist_cnn import tracking

        run_id, self.run_id = self.run_id, None
        summary = tracking.close_parent_run(config.tracking, run_id, config.objective, status)
        log.info("sweep parent run %s: %s", run_id, summary)
