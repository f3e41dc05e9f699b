"""Relative paths in a config mean the folder the command was started from, wherever a job runs.

Hydra records that folder as `hydra.runtime.cwd`, also for jobs that a launcher (joblib, submitit,
Slurm) starts elsewhere; the command line makes `data.root` and a relative sqlite store absolute
against it before anything reads them, so the logged config names the real folders.
"""

from pathlib import Path

from omegaconf import DictConfig

SQLITE = "sqlite:///"


def make_paths_absolute(cfg: DictConfig, base: Path) -> None:
    root = Path(cfg.data.root).expanduser()
    if not root.is_absolute():
        cfg.data.root = str(base / root)
    uri = cfg.tracking.uri
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/") and uri != SQLITE + ":memory:":
        cfg.tracking.uri = SQLITE + str(base / uri[len(SQLITE) :])
