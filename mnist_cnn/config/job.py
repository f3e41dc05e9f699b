"""What Hydra knows about the job that is running: its overrides, multirun mode, the sweep's file.

Outside Hydra (a test or a script calling engine.train.run) there are no overrides and no sweep.
"""

import json
from pathlib import Path
from typing import Any, Dict, List

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

SWEEP_FILE = "mlflow_sweep.json"  # written by sweep.callback: {"parent_run_id": ..., "swept": [keys]}


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> List[str]:
    """The command-line overrides of this run or job (`optimizer.lr=0.003`, ...)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def sweep_info() -> Dict[str, Any]:
    """What the launching process wrote for this job's sweep; empty outside a tracked multirun."""
    path = Path(HydraConfig.get().sweep.dir) / SWEEP_FILE if in_multirun() else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}
