"""An Optuna search run as a user runs it, on tiny data, and what it left: its parent, its jobs and its study."""

from pathlib import Path
from typing import Dict, Tuple

import optuna
from mlflow.entities import Run

from mnist_cnn.sweep.study import open_storage
from tests.helpers import processes
from tests.helpers.mlflow_store import runs as runs_in


def search(root: Path, uri: str, folder: Path, *overrides: str) -> Tuple[Run, Dict[str, Run], optuna.Study, str]:
    """`mnist-cnn-train -m OVERRIDES` from `folder` (its store there): the parent run, the jobs' runs
    by id, the study (the journal beside the store) and what the command printed."""
    out = processes.run(processes.train_command(root, uri, *overrides, multirun=True), folder)
    assert out.returncode == 0, out.stderr[-3000:]
    found = runs_in(uri)
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    study = optuna.load_study(
        study_name=parent.data.tags["optuna_study"], storage=open_storage(str(folder / "mlflow.db.optuna.journal"))
    )
    return parent, {r.info.run_id: r for r in found if r is not parent}, study, out.stdout + out.stderr
