"""The config tree: where its YAML files are, the schemas Hydra composes them into, and the extra
folders a command line adds to it.

The tree is two folders at the top of the repository: `conf/` (`config.yaml`, one folder per
group, `hparams_search/` for Optuna search spaces, `hydra/`) and `experiments/`, whose files are
the options of the group `experiment` (`experiment=fast99`; hydra_plugins.mnist_cnn_experiments
puts the folder on Hydra's search path under that name). A wheel ships both inside the package
(mnist_cnn/conf, mnist_cnn/experiments: pyproject.toml's package-dir); a checkout (an editable
install, PYTHONPATH) reads them where they are. Users add their own groups or presets from any
folder with Hydra's own `--config-dir DIR` (`-cd DIR`) or `hydra.searchpath=[file://DIR]`: a
file `DIR/experiment/mine.yaml` is then `experiment=mine`.
"""

import dataclasses
import re
from pathlib import Path
from typing import List

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mnist_cnn.config import search
from mnist_cnn.config.checks import unknown_key
from mnist_cnn.config.paths import EXPERIMENT, ConfigFolder, find_config
from mnist_cnn.config.schema import OPTIONS, Config

_PACKAGE = Path(__file__).parents[1]
# An installed wheel has the tree inside the package; a checkout has it beside the package.
TREE_ROOT = _PACKAGE if (_PACKAGE / "conf" / "config.yaml").is_file() else _PACKAGE.parent
CONF_DIR = TREE_ROOT / "conf"
EXPERIMENTS_DIR = TREE_ROOT / "experiments"
CONFIG_NAME = "config"


def register() -> None:
    """Register `config_schema` (the `Config` that `config.yaml` names first), every option's schema
    that its file names first (`/<group>_<option>_schema@_here_`: outside the groups, so that
    `--help` does not offer it as an option), and the Optuna sweeper's options
    (`hydra/sweeper=optuna`). Storing again replaces: calling twice is harmless."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, options in OPTIONS.items():
        for option in options:
            store.store(name=option_schema(group, option.name), node=option)
    search.register(store)


def option_schema(group: str, option: str) -> str:
    """The ConfigStore name of an option's schema, which its YAML file names first."""
    return f"{group}_{option}_schema"


def compose(overrides: List[str]) -> DictConfig:
    """The config `mnist-cnn-train OVERRIDES` would run, composed without a command line (tests,
    benchmarks, notebooks); `hydra.searchpath=[file://DIR]` among the overrides adds a folder."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))


def shipped_folders() -> List[ConfigFolder]:
    """The project's config tree as Hydra searches it: conf/, then experiments/ as the group `experiment`."""
    return [ConfigFolder(CONF_DIR), ConfigFolder(EXPERIMENTS_DIR, EXPERIMENT)]


def config_dirs(args: List[str]) -> List[ConfigFolder]:
    """The project's config tree plus the folders a command line adds: `--config-dir DIR` (`-cd DIR`)
    and the `file://` entries of `hydra.searchpath=[...]`."""
    dirs = []
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(Path(args[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.partition("=")[2]))
        elif arg.lstrip("+").startswith("hydra.searchpath="):
            entries = arg.partition("=")[2].strip("[]").split(",")
            dirs += [
                Path(e.strip().strip("'\"").removeprefix("file://"))
                for e in entries
                if e.strip().strip("'\"").startswith("file://")
            ]
    return shipped_folders() + [ConfigFolder(d) for d in dirs]


def composition_error(error: Exception, dirs: List[ConfigFolder]) -> str:
    """One line for an error Hydra met while composing the config: a YAML file that does not parse
    (`FILE line L, column C: ...`), or a key no schema has, in a file or on the command line (with
    the key it is closest to); any other error as Hydra itself prints it."""
    if isinstance(error, yaml.YAMLError):
        return yaml_problem(error)
    unknown = error.__cause__ or error.__context__
    if isinstance(unknown, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(unknown.object_type):
        line = unknown_key(unknown.full_key, unknown.object_type)
        source = re.match(r"In '([^']+)':", str(error))  # Hydra names the config it was merging
        found = find_config(dirs, source.group(1)) if source else None
        return f"{found or source.group(1)}: {line}; fix it there." if source else f"{line}."
    cause = error.__cause__
    return f"{error}\n{cause}" if isinstance(cause, OmegaConfBaseException) else str(error)


def yaml_problem(error: yaml.YAMLError) -> str:
    """`FILE line L, column C: what is wrong; fix the YAML there.` (the file is the stream's name)."""
    mark = getattr(error, "problem_mark", None)
    where = f"{mark.name} line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
    return f"{where}: {getattr(error, 'problem', None) or error}; fix the YAML there."
