"""Where a run reads and records: the default data folder and tracking store, relative paths made
absolute, and which file of a folder on Hydra's search path a config name is.

Relative paths in a config mean the folder the command was started from, wherever a job runs.
Hydra records that folder as `hydra.runtime.cwd`, also for jobs that a launcher (joblib, submitit,
Slurm) starts elsewhere; the command line makes `data.root` and a relative sqlite store absolute
against it before anything reads them, so the logged config names the real folders.
"""

import os
from pathlib import Path
from typing import Iterable, NamedTuple, Optional

from omegaconf import DictConfig

SQLITE = "sqlite:///"
DEFAULT_TRACKING_URI = SQLITE + "mlflow.db"  # MLflow 3's own default: ./mlflow.db
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_DATA_ROOT = "./data"  # `make train` fetches MNIST there
DATA_ROOT_ENV = "MNIST_CNN_DATA_DIR"


def default_data_root() -> str:
    """The folder that holds <Folder>/raw unless told otherwise (data.root's default): $MNIST_CNN_DATA_DIR,
    else ./data, relative to the working folder."""
    return os.environ.get(DATA_ROOT_ENV, DEFAULT_DATA_ROOT)


def default_tracking_uri() -> str:
    """The store every command uses unless told otherwise: $MLFLOW_TRACKING_URI, else ./mlflow.db."""
    return os.environ.get(TRACKING_URI_ENV, DEFAULT_TRACKING_URI)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (relative to the working folder if the URI is); None for
    another kind of store or an in-memory database."""
    if not uri.startswith(SQLITE) or uri == SQLITE + ":memory:":
        return None
    return Path(uri[len(SQLITE) :])


def make_paths_absolute(cfg: DictConfig, base: Path) -> None:
    root = Path(cfg.data.root).expanduser()
    if not root.is_absolute():
        cfg.data.root = str(base / root)
    path = sqlite_path(cfg.tracking.uri)
    if path is not None and not path.is_absolute():
        cfg.tracking.uri = SQLITE + str(base / path)


EXPERIMENT = "experiment"  # the group of whole-experiment presets, whose shipped folder is experiments/
EXPERIMENTS_SCHEME = "mnist-cnn-experiments"  # Hydra's config source for that folder (hydra_plugins)


class ConfigFolder(NamedTuple):
    """A folder of YAML configs on Hydra's search path: a whole tree (`model/x` is path/model/x.yaml)
    or, with `group`, that group's options alone (experiments/: `experiment/fast99` is path/fast99.yaml)."""

    path: Path
    group: str = ""

    def within(self, config_path: str) -> Optional[str]:
        """The path inside this folder that Hydra's `config_path` (`experiment/fast99`, `experiment`,
        `model`) names; None for a path outside the folder's group."""
        if not self.group:
            return config_path
        if config_path == self.group:
            return ""
        head, _, rest = config_path.partition("/")
        return rest if head == self.group else None

    def file(self, name: str) -> Optional[Path]:
        """The YAML file config `name` (`experiment/mine`) would be in this folder; None outside its group."""
        inside = self.within(name)
        return None if inside is None else self.path / f"{inside}.yaml"


def find_config(folders: Iterable[ConfigFolder], name: str) -> Optional[Path]:
    """The file of config `name` (`experiment/mine`) in the first of the config folders that has
    it, as Hydra's search path finds it; None if none has."""
    files = (folder.file(name) for folder in folders)
    return next((f for f in files if f is not None and f.is_file()), None)
