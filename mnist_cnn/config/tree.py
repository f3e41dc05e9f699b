"""The config tree: where its YAML files are, the schemas Hydra composes them into, and the extra
folders a command line adds to it.

Every group lives in `mnist_cnn/conf/` (real files, shipped in the wheel): `config.yaml`, one
folder per group, `experiment/` for whole-experiment presets and `hparams_search/` for Optuna
search spaces. Users add their own groups or presets from any folder with Hydra's own
`--config-dir DIR` (`-cd DIR`) or `hydra.searchpath=[file://DIR]`: a file `DIR/experiment/mine.yaml`
is then `experiment=mine`.
"""

import os
from pathlib import Path
from typing import Iterator, List

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from mnist_cnn.config import search
from mnist_cnn.config.schema import OPTIONS, Config

CONF_DIR = Path(__file__).parents[1] / "conf"
CONFIG_NAME = "config"


def register() -> None:
    """Register `config_schema` (the `Config` that `config.yaml` names first) and every
    `<group>/base_<option>` that the option files name, and the Optuna sweeper's options
    (`hydra/sweeper=optuna`). Storing again replaces: calling twice is harmless."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, options in OPTIONS.items():
        for option in options:
            store.store(group=group, name=f"base_{option.name}", node=option)
    search.register(store)


def compose(overrides: List[str]) -> DictConfig:
    """The config `mnist-cnn-train OVERRIDES` would run, composed without a command line (tests,
    benchmarks, notebooks); `hydra.searchpath=[file://DIR]` among the overrides adds a folder."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))


def config_dirs(args: List[str]) -> List[Path]:
    """The package's config tree plus the folders a command line adds: `--config-dir DIR` (`-cd DIR`)
    and the `file://` entries of `hydra.searchpath=[...]`."""
    dirs = [CONF_DIR]
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
    return dirs


def yaml_problems(dirs: List[Path]) -> Iterator[str]:
    """`FILE line L, column C: what is wrong` for each YAML file that does not parse."""
    for folder in dirs:
        for parent, _, names in os.walk(folder):
            for name in sorted(n for n in names if n.endswith((".yaml", ".yml"))):
                path = Path(parent) / name
                try:
                    yaml.safe_load(path.read_text(encoding="utf-8"))
                except yaml.YAMLError as e:
                    mark = getattr(e, "problem_mark", None)
                    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                    yield f"{path}{where}: {getattr(e, 'problem', None) or e}; fix the YAML there."
