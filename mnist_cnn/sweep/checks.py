"""What an Optuna search is refused for before its parent run opens, each as one line (the sweep
callback prints it and exits 2): found later, each ended in a traceback with the parent KILLED, a
trial left RUNNING that counted toward `n_trials`, and a resumed sweep that failed the same way.

- `n_trials` or `n_jobs` below 1;
- a search space Optuna cannot draw from (sweep.search.search_space), or a searched key the config
  does not have (a typo: every job would fail to compose);
- a sampler that cannot take the space or the objectives: `grid` over anything but `choice(...)`,
  `cmaes` with several objectives or without its package;
- a storage that would be the MLflow store itself (Optuna would add its tables to it), or that
  cannot be written;
- a study, joined by `hydra.sweeper.study_name` or `resume_sweep=`, that searched another space or
  optimised other objectives: its trials would mix with this sweep's.
"""

import difflib
import importlib
import tempfile
from pathlib import Path
from typing import Dict, Optional

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from mnist_cnn.config.job import Study
from mnist_cnn.config.keys import flatten
from mnist_cnn.config.paths import sqlite_path
from mnist_cnn.config.schema import objectives
from mnist_cnn.config.search import study_of
from mnist_cnn.errors import ConfigError
from mnist_cnn.sweep.search import search_space
from mnist_cnn.sweep.study import open_storage
from mnist_cnn.tracking.redact import redact

SAMPLER_PACKAGES = {"CmaEsSampler": "cmaes"}  # what Optuna imports only once the sampler draws its second trial
SINGLE_OBJECTIVE = ("CmaEsSampler",)  # Optuna's samplers that cannot weigh several objectives


def search_problem(config: DictConfig) -> Optional[str]:
    """Why the Optuna search of the sweep `config` (with its `hydra` node) cannot run, or None."""
    options = config.hydra.sweeper
    for key in ("n_trials", "n_jobs"):
        if options[key] < 1:
            return f"hydra.sweeper.{key}={options[key]}: give 1 or more."
    try:
        space, _ = search_space(options.params or {}, list(config.hydra.overrides.task))
    except ConfigError as e:
        return str(e)
    where = study_of(config, config.resume_sweep or None)
    return (
        key_problem(config, space)
        or sampler_problem(options.sampler._target_.rsplit(".", 1)[-1], space, len(config.objective.metrics))
        or store_problem(where.storage, config.tracking.uri if config.tracking.enabled else None)
        or study_problem(config, space, where)
        or writable_problem(where.storage)  # last: it makes the storage's folder
    )


def key_problem(config: DictConfig, space: Dict[str, BaseDistribution]) -> Optional[str]:
    """A searched key that is not in the config (`+key` adds one, `key@package` moves a group: both
    are left to Hydra), with the nearest key that is."""
    job = config.copy()
    with open_dict(job):
        job.pop("hydra", None)
    missing = object()
    for key in space:
        if key[0] != "+" and "@" not in key and OmegaConf.select(job, key, default=missing) is missing:
            known = [*job.keys(), *flatten(OmegaConf.to_container(job))]
            close = difflib.get_close_matches(key, [str(k) for k in known], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            return (
                f"{key}: not a key of the config ({hint}a misspelled key would fail every trial); fix it in "
                "hydra.sweeper.params or on the command line."
            )
    return None


def sampler_problem(sampler: str, space: Dict[str, BaseDistribution], n_objectives: int) -> Optional[str]:
    """A sampler (Optuna's class name) that cannot search `space` for `n_objectives` objectives, or
    whose package is not installed."""
    name = sampler.removesuffix("Sampler").lower()
    if sampler == "GridSampler":
        other = next((k for k, d in space.items() if not isinstance(d, CategoricalDistribution)), None)
        if other is not None:
            return (
                f"hydra/sweeper/sampler=grid tries every combination of choice(...) values, but {other} is searched "
                f"as {hydra_syntax(space[other])}; make it a choice(...), or pick another sampler."
            )
    if sampler in SINGLE_OBJECTIVE and n_objectives > 1:
        return (
            f"hydra/sweeper/sampler={name} optimises one objective, but objective.metrics has {n_objectives}; use "
            "hydra/sweeper/sampler=nsgaii (or tpe) for several."
        )
    package = SAMPLER_PACKAGES.get(sampler)
    if package is not None:
        try:
            importlib.import_module(package)
        except ImportError:
            return (
                f"hydra/sweeper/sampler={name} needs the {package} package, which is not installed here: "
                f"pip install {package} (or pick another sampler)."
            )
    return None


def store_problem(storage: str, tracking_uri: Optional[str]) -> Optional[str]:
    """A study's storage that is the MLflow store `tracking_uri` itself."""
    path, store = _file(storage), sqlite_path(tracking_uri) if tracking_uri else None
    if storage == tracking_uri or (path is not None and store is not None and path.resolve() == store.resolve()):
        return (
            f"hydra.sweeper.storage={redact(storage)} is the MLflow tracking store itself, where Optuna would add its "
            "own tables; leave hydra.sweeper.storage out (a journal beside the store), or name another file."
        )
    return None


def writable_problem(storage: str) -> Optional[str]:
    """A study's file that cannot be made or written (tried: permissions do not tell root, and a
    read-only disk only shows when trying), or None; a server's URL is left to Optuna."""
    path = _file(storage)
    try:
        if path is None:
            return None
        if path.exists():
            path.open("ab").close()  # appends nothing: only asks whether it could
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        reason = "Not a directory" if isinstance(e, FileExistsError) else e.strerror  # a file where a folder goes
        return f"hydra.sweeper.storage={path}: cannot write the study there ({reason}); name another file."
    return None


def study_problem(config: DictConfig, space: Dict[str, BaseDistribution], where: Study) -> Optional[str]:
    """A study that already exists (joined by name, or a resumed sweep's) and searched another
    space, or optimises other metrics or directions, than this sweep."""
    study = existing_study(where)
    if study is None:
        return None
    metrics, directions = zip(*objectives(config.objective))
    recorded = study.metric_names
    if [d.name.lower() for d in study.directions] != list(directions) or (recorded and recorded != list(metrics)):
        theirs = ", ".join(
            f"{m} ({d.name.lower()})" for m, d in zip(recorded or ["?"] * len(study.directions), study.directions)
        )
        ours = ", ".join(f"{m} ({d})" for m, d in zip(metrics, directions))
        return (
            f"study {where.name}: it optimises {theirs}, but this sweep's objective is {ours}; keep "
            "objective.metrics and objective.directions as they were, or name another hydra.sweeper.study_name."
        )
    searched = searched_space(study)
    for key in [*searched, *(k for k in space if k not in searched)] if searched else []:
        if searched.get(key) != space.get(key):
            return (
                f"study {where.name}: it searched {key} as {hydra_syntax(searched.get(key))}, this sweep as "
                f"{hydra_syntax(space.get(key))}; search the same space, or name another hydra.sweeper.study_name."
            )
    return None


def existing_study(where: Study) -> Optional[optuna.Study]:
    """The study `where` names if it exists, without making its storage (a file not there yet holds
    no study)."""
    path = _file(where.storage)
    if path is not None and not path.is_file():
        return None
    storage = open_storage(where.storage, create=path is None)  # a server: as the search would open it
    try:
        return optuna.load_study(study_name=where.name, storage=storage)
    except KeyError:  # no study of that name there
        return None


def searched_space(study: optuna.Study) -> Dict[str, BaseDistribution]:
    """Each key the study's trials searched, with its distribution (its latest trial's)."""
    space: Dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        space.update(trial.distributions)
    return space


def hydra_syntax(distribution: Optional[BaseDistribution]) -> str:
    """An Optuna distribution in the search syntax of hydra.sweeper.params (sweep.search.distribution)."""
    if distribution is None:
        return "not searched"
    if isinstance(distribution, CategoricalDistribution):
        return f"choice({', '.join(str(c) for c in distribution.choices)})"
    if isinstance(distribution, IntDistribution):
        return f"range({distribution.low}, {distribution.high + distribution.step}, {distribution.step})"
    interval = f"interval({distribution.low:g}, {distribution.high:g})"
    return f"tag(log, {interval})" if distribution.log else interval


def _file(storage: str) -> Optional[Path]:
    """The file of an Optuna storage (a journal, a sqlite URL's database); None for a server."""
    return sqlite_path(storage) if "://" in storage else Path(storage)
