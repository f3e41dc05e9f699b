"""An Optuna search run as a user runs it, on tiny data, and what it left: its parent, its jobs and its study."""

import signal
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import optuna
from hydra import compose, initialize_config_dir
from mlflow.entities import Run
from omegaconf import DictConfig, open_dict

from mnist_cnn.config import tree
from mnist_cnn.sweep.study import open_storage
from tests.helpers import processes
from tests.helpers.mlflow_store import runs as runs_in


def sweep_config(tmp_path: Optional[Path], *overrides: str, params: Optional[Dict[str, str]] = None) -> DictConfig:
    """The config of `mnist-cnn-train -m OVERRIDES` with its `hydra` node, as the sweep callback and
    the sweeper are given it, its sweep folder `tmp_path/sweep` (None: Hydra's); `params` are added
    to hydra.sweeper.params (a dotted key cannot be added there on the command line)."""
    tree.register()
    with initialize_config_dir(config_dir=str(tree.CONF_DIR), version_base="1.3"):
        config = compose(tree.CONFIG_NAME, list(overrides), return_hydra_config=True)
    with open_dict(config):
        config.hydra.sweep.dir = str(tmp_path / "sweep") if tmp_path else config.hydra.sweep.dir
        if params:
            config.hydra.sweeper.params.update(params)
    return config


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


def children(uri: str) -> tuple:
    found = runs_in(uri)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], [r for r in found if r is not parents[0]]


def stop_with_sigterm(command: list, folder, uri: str, finished: int) -> str:
    """Start a sweep and send it SIGTERM once `finished` of its runs have finished: it exits 130;
    returns what it printed."""
    job = processes.start(command, folder)
    deadline = time.time() + 300
    while time.time() < deadline and sum(r.info.status == "FINISHED" for r in runs_in(uri)) < finished:
        time.sleep(0.2)
    assert job.poll() is None, "the sweep ended before the signal: give its jobs more epochs"
    job.send_signal(signal.SIGTERM)
    output = job.communicate(timeout=120)[0]
    assert job.returncode == 130, output[-3000:]
    return output


def study_of(parent, folder) -> optuna.Study:
    """The study of an Optuna search's parent run, from its journal beside the store in `folder`."""
    return optuna.load_study(
        study_name=parent.data.tags["optuna_study"],
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(folder / "mlflow.db.optuna.journal"))
        ),
    )
