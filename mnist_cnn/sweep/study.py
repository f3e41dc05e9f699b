"""The study of an Optuna search: where it is kept, how a sweep opens it (and a resumed sweep
continues it), and which of its trials count toward `n_trials`.

The study persists: beside a sqlite tracking store as an Optuna journal file (`mlflow.db` ->
`mlflow.db.optuna.journal`; Optuna's SQL tables would collide with MLflow's in one database), in
the sweep folder otherwise, or in `hydra.sweeper.storage` (an Optuna storage URL, or a journal
file); config.search.study_of names it. `n_trials` counts every trial of the study, so:
- `resume_sweep=` continues the same study: trials its stopped run left RUNNING are asked again
  first, with the same values (each job then continues its own MLflow run), and its sampler is
  seeded anew from its seed and the trials so far, so that it does not draw its first points again;
- two sweeps sharing a study (two shells, two Slurm arrays) stop at exactly `n_trials` between
  them: a trial asked beyond that count is marked surplus and never launched.
Each trial keeps, as user attributes, the sweep that asked it and the MLflow run of its job.
"""

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mnist_cnn.config.job import Study
from mnist_cnn.config.schema import objectives
from mnist_cnn.config.search import study_of
from mnist_cnn.tracking.redact import redact

log = logging.getLogger(__name__)

PARENT, RUN = "mlflow_parent_run", "mlflow_run"  # trials' user attributes: the sweep's parent run, the job's run
ASKED_AGAIN, SURPLUS = "asked_again", "surplus"  # and: a stopped trial asked again; one asked beyond n_trials
REPEATS = "repeats"  # and: the earlier trial whose values (and so result) it has


def open_storage(location: str, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage URL (sqlite:///, postgresql://) as RDB storage, any other string as a
    journal file. `create=False` opens only a storage that exists (FileNotFoundError for a
    missing journal) and adds no tables."""
    if "://" in location:
        return optuna.storages.RDBStorage(location, skip_table_creation=not create)
    if create:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    elif not Path(location).is_file():
        raise FileNotFoundError(location)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(location))


def open_study(config: DictConfig, space: Dict[str, BaseDistribution], parent: Optional[str]) -> optuna.Study:
    """The sweep's study, created or loaded; a resumed sweep's stopped trials are asked again first."""
    where = study_of(config, parent)
    storage = open_storage(where.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    study = optuna.create_study(
        storage=storage,
        study_name=where.name,
        sampler=sampler(config.hydra.sweeper, space, existing.get(where.name, 0)),
        directions=[direction for _, direction in objectives(config.objective)],
        load_if_exists=True,
    )
    if study.metric_names is None:  # a new study (sweep.checks refused one with other metrics)
        _name_metrics(study, [metric for metric, _ in objectives(config.objective)])
    if config.resume_sweep and parent:
        _ask_again_stopped(study, storage, where, parent)
    log.info("Optuna study %s in %s: %d trials so far", where.name, redact(where.storage), len(counted(study.trials)))
    return study


def _name_metrics(study: optuna.Study, metrics: List[str]) -> None:
    """Record the objective's metric names in the study: Optuna's dashboard shows them instead of
    "Objective 0", and a sweep joining the study is checked against them (sweep.checks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metrics)


def sampler(options: DictConfig, space: Dict[str, BaseDistribution], trials_so_far: int) -> optuna.samplers.BaseSampler:
    """hydra.sweeper.sampler as Optuna's. A study that already has trials (a resumed sweep, or one
    sharing the study) seeds it from its seed and that count: reproducible, and never drawing the
    first sweep's points again. A grid keeps its seed, which orders its points: it never draws a
    point twice anyway."""
    seed, grid = options.sampler.seed, options.sampler._target_.endswith("GridSampler")
    reseed = {"seed": seed + trials_so_far} if seed is not None and trials_so_far and not grid else {}
    return instantiate(options.sampler, **({"search_space": _grid(space)} if grid else {}), **reseed)


def _grid(space: Dict[str, BaseDistribution]) -> Dict[str, List[Any]]:
    """GridSampler's search space: every searched key is a choice (sweep.checks refuses another)."""
    return {key: list(d.choices) for key, d in space.items()}


def _ask_again_stopped(study: optuna.Study, storage: optuna.storages.BaseStorage, where: Study, parent: str) -> None:
    """Trials this sweep left RUNNING when it was stopped: asked again first, with the same values,
    so that each job continues its own run; the stopped trial no longer counts."""
    study_id = storage.get_study_id_from_name(where.name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(PARENT) == parent:
            study.enqueue_trial(trial.params, user_attrs={PARENT: parent})
            stopped = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_user_attr(stopped, ASKED_AGAIN, True)
            told(study, trial.number, state=TrialState.FAIL)


def counted(trials: List[FrozenTrial]) -> List[FrozenTrial]:
    """The trials that count toward n_trials: not surplus, and not a stopped trial asked again."""
    return [t for t in trials if not (t.user_attrs.get(SURPLUS) or t.user_attrs.get(ASKED_AGAIN))]


def told(study: optuna.Study, trial: Union[optuna.Trial, int], **result: Any) -> None:
    """`study.tell`. Told its grid's last point, a GridSampler asks the study to stop, which only
    `optimize` can (RuntimeError, Optuna issue #5141); the trial is stored by then, and the search
    stops at an exhausted grid."""
    try:
        study.tell(trial, **result)
    except RuntimeError:
        if not grid_done(study):
            raise


def grid_done(study: optuna.Study) -> bool:
    return isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study)
