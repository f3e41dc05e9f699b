"""The sweepers' options, typed: `hydra/sweeper=optuna` and one schema per sampler in
`hydra/sweeper/sampler` (tpe, random, grid, cmaes, gp, nsgaii), each with the options of its Optuna
class, so an option a sampler does not have is refused while composing, before anything runs; and
`hydra/sweeper=basic`, the default, made mnist_cnn's copy of Hydra's basic sweeper. The sweepers
themselves are hydra_plugins/mnist_cnn_sweeper (the Optuna one runs mnist_cnn.sweep.search).
"""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from omegaconf import MISSING, DictConfig

from mnist_cnn.config.job import Study
from mnist_cnn.config.paths import SQLITE, sqlite_path

JOURNAL = ".optuna.journal"  # beside a sqlite tracking store: mlflow.db.optuna.journal


@dataclass
class SamplerConfig:
    _target_: str = MISSING
    seed: Optional[int] = None  # the same trials on every machine; a resumed study continues the sequence


@dataclass
class TPESamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 10  # random trials before the model of good and bad ones takes over
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = False  # for parallel trials: a running trial counts as a bad one


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class GridSamplerConfig(SamplerConfig):
    """Every combination of `choice(...)` values once (the search space must be all choices)."""

    _target_: str = "optuna.samplers.GridSampler"


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    sigma0: Optional[float] = None
    n_startup_trials: int = 1
    popsize: Optional[int] = None
    use_separable_cma: bool = False
    with_margin: bool = False
    lr_adapt: bool = False
    warn_independent_sampling: bool = True


@dataclass
class GPSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.GPSampler"
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


SAMPLERS = {
    "tpe": TPESamplerConfig,
    "random": RandomSamplerConfig,
    "grid": GridSamplerConfig,
    "cmaes": CmaEsSamplerConfig,
    "gp": GPSamplerConfig,
    "nsgaii": NSGAIISamplerConfig,
}


@dataclass
class OptunaSweeperConfig:
    _target_: str = "hydra_plugins.mnist_cnn_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the search builds the sampler itself: a grid's needs the search space
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: SamplerConfig = MISSING
    n_trials: int = 20  # trials in the study, those of an earlier or a parallel sweep of it included
    n_jobs: int = 1  # trials in flight at a time: raise it with a launcher that runs jobs side by side
    asynchronous: bool = True  # with such a launcher, the next trial starts as soon as one ends; false: in batches
    study_name: Optional[str] = None  # null: one study per sweep; a name shares the study between sweeps
    storage: Optional[str] = None  # null: beside the tracking store (a journal file), or an Optuna storage URL
    params: Dict[str, str] = field(default_factory=dict)  # key: Hydra's search syntax, e.g. choice(16, 32)


def sampler_problem(sweeper: DictConfig) -> Optional[str]:
    """A sampler option added with `+` that its Optuna class does not take (Hydra checks the others
    while composing), or None."""
    sampler = sweeper.get("sampler")
    schema = next((s for s in SAMPLERS.values() if sampler is not None and s._target_ == sampler.get("_target_")), None)
    if schema is None:
        return None
    known = [f.name for f in fields(schema)]
    unknown = [key for key in sampler if key not in known]
    if not unknown:
        return None
    name = next(n for n, s in SAMPLERS.items() if s is schema)
    options = ", ".join(k for k in known if k != "_target_")
    return f"hydra.sweeper.sampler.{unknown[0]}: not an option of the {name} sampler (its options: {options})."


def study_of(config: DictConfig, parent: Optional[str]) -> Study:
    """The study of the search that `config` (a sweep's, with its `hydra` node) runs, and where it
    is kept: `hydra.sweeper.study_name`, else `sweep-<parent run id>` (the sweep folder's name when
    untracked); `hydra.sweeper.storage`, else a journal beside a sqlite tracking store, else one in
    the sweep folder. A file is named absolute (storage_at)."""
    options = config.hydra.sweeper
    name = options.study_name or f"sweep-{parent or Path(config.hydra.sweep.dir).name}"
    cwd = Path(config.hydra.runtime.get("cwd") or Path.cwd())
    path = sqlite_path(config.tracking.uri) if config.tracking.enabled else None
    default = str(path) + JOURNAL if path else str(Path(config.hydra.sweep.dir) / "optuna.journal")
    return Study(name, storage_at(options.storage or default, cwd))


def storage_at(storage: str, cwd: Path) -> str:
    """An Optuna storage with its file (a journal, or a sqlite URL's database) absolute: `~` is the
    user's home and a relative path means `cwd`, the folder the command was started in, so a sweep
    resumed from elsewhere finds the same study. A server's URL is returned as it is."""
    url = "://" in storage
    path = sqlite_path(storage) if url else Path(storage)
    if path is None:
        return storage
    path = cwd / path.expanduser()  # an absolute path stays itself
    return SQLITE + str(path) if url else str(path)


def is_optuna(sweeper: DictConfig) -> bool:
    """Whether `hydra.sweeper` is this package's Optuna sweeper."""
    return sweeper.get("_target_") == OptunaSweeperConfig._target_


@dataclass
class BasicSweeperConfig(BasicSweeperConf):
    """Hydra's basic sweeper and its keys (every combination of the values given to -m), as the
    subclass that composes each job's config once (hydra_plugins/mnist_cnn_sweeper says why)."""

    _target_: str = "hydra_plugins.mnist_cnn_sweeper.BasicSweeper"


def register(store: ConfigStore) -> None:
    """Put the sweepers and the samplers into Hydra's config store: `hydra/sweeper=optuna`, and
    `hydra/sweeper=basic` (Hydra's default) in place of Hydra's own entry. Hydra stores its entry
    each time it scans its plugins (running their modules again), which it does once per process:
    made to scan first, it cannot store its entry after this one."""
    Plugins.instance()
    store.store(group="hydra/sweeper", name="basic", node=BasicSweeperConfig, provider="mnist_cnn")
    store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConfig, provider="mnist_cnn")
    for name, schema in SAMPLERS.items():
        store.store(group="hydra/sweeper/sampler", name=name, node=schema, provider="mnist_cnn")
