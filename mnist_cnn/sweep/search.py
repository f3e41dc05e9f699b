"""An Optuna search run by a Hydra sweeper (hydra_plugins/mnist_cnn_sweeper): ask Optuna for trials,
launch them as jobs through whatever launcher the sweep uses (basic, joblib, submitit, Slurm), tell
Optuna what each returned.

The search space is written in Hydra's own syntax (`choice(16, 32)`, `range(1, 9)`, `interval(0.1,
0.5)`, `tag(log, interval(1e-4, 1e-2))`), in `hydra.sweeper.params` or on the command line. The
study, where it is kept, and how a resumed or shared sweep counts its trials: sweep.study.

Each job returns its Outcome: the trial completes with the values of objective.metrics (several
make the study multi-objective: the parent is then tagged with the runs on its Pareto front), is
pruned, or fails, and keeps the job's run. A job learns its trial's number from the search (an
environment variable Hydra sets) and the study from the sweep file, so that it can report its
epochs to the study's pruner (sweep.prune). At the end the parent logs what the search found
(sweep.search_report).
"""

import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mnist_cnn.config.job import TRIAL_ENV
from mnist_cnn.config.schema import objectives
from mnist_cnn.runner.outcome import Outcome
from mnist_cnn.sweep.search_report import log_importances, tag_pareto_front
from mnist_cnn.sweep.study import PARENT, REPEATS, RUN, SURPLUS, counted, grid_done, open_study, told
from mnist_cnn.tracking import store

log = logging.getLogger(__name__)


def search_space(params: Dict[str, str], arguments: Sequence[str]) -> Tuple[Dict[str, BaseDistribution], List[str]]:
    """Optuna's distributions of the searched keys, and the overrides every trial shares. A key given
    a single value on the command line is fixed there, whatever `params` searches."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments))
    space: Dict[str, BaseDistribution] = {}
    fixed: List[str] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            space.pop(key, None)
            fixed.append(override.input_line)
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    """`choice(...)` and a shuffled `range(...)`: categorical; `range(a, b[, step])`: the integers
    Python's range gives (a float range: its values, as a choice); `interval(a, b)`: uniform floats
    (Hydra reads its ends as floats), log-uniform when tagged `log`."""
    values = list(override.sweep_iterator(transformer=Transformer.encode)) if not override.is_interval_sweep() else []
    sweep = override.value()
    if override.is_choice_sweep() or (
        override.is_range_sweep() and (sweep.shuffle or any(isinstance(v, float) for v in values))
    ):
        return CategoricalDistribution(values)
    if override.is_range_sweep():
        return IntDistribution(values[0], values[-1], step=int(sweep.step))
    return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)


def run_search(config: DictConfig, launcher: Any, arguments: List[str], parent: Optional[str]) -> None:
    """The whole search of the sweep whose parent run is `parent` (None: untracked): the study
    opened (or continued), then batches of `n_jobs` trials until the study holds `n_trials`; at the
    end, what mattered and (several objectives) the Pareto front."""
    options = config.hydra.sweeper
    space, fixed = search_space(options.params or {}, arguments)
    study = open_study(config, space, parent)
    metrics = [metric for metric, _ in objectives(config.objective)]
    job_index = 0
    while True:
        trials = _ask(study, space, options.n_trials, options.n_jobs, parent)
        if not trials:
            break
        trials = [trial for trial in trials if not _told_as_before(study, trial)]
        if not trials:
            continue
        overrides = [[*fixed, *(f"{k}={v}" for k, v in trial.params.items()), _trial_env(trial)] for trial in trials]
        returns = launcher.launch(overrides, initial_job_idx=job_index)
        job_index += len(trials)
        for trial, returned in zip(trials, returns):
            _tell(study, trial, returned, metrics)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if completed and len(metrics) == 1:
        log.info("study %s: best %s %g with %s", study.study_name, metrics[0], study.best_value, study.best_params)
    if parent is None:
        return
    client = store.connect(config.tracking.uri)  # the parent's store
    if len(metrics) > 1:
        tag_pareto_front(client, parent, study, metrics)
    if space:
        log_importances(client, parent, study, metrics)


def _told_as_before(study: optuna.Study, trial: optuna.Trial) -> bool:
    """A trial with the values of an earlier finished trial of this sweep (a sampler may draw them
    again: NSGA-II's crossover often does) is told that trial's result and shares its run: its job
    would train the same config from the same seed. Returns whether it was."""
    parent = trial.user_attrs.get(PARENT)
    earlier = next(
        (
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if parent and t.user_attrs.get(PARENT) == parent and RUN in t.user_attrs and t.params == trial.params
        ),
        None,
    )
    if earlier is None:
        return False
    trial.set_user_attr(RUN, earlier.user_attrs[RUN])
    trial.set_user_attr(REPEATS, earlier.number)
    if earlier.state == TrialState.PRUNED:
        told(study, trial, state=TrialState.PRUNED)
    else:
        told(study, trial, values=earlier.values)
    log.info(
        "trial %d has trial %d's values: told its result, run %s not trained again",
        trial.number,
        earlier.number,
        earlier.user_attrs[RUN],
    )
    return True


def _trial_env(trial: optuna.Trial) -> str:
    """The override that tells the job its trial (Hydra sets it in the job's environment): a job
    that can reach the study reports its epochs there and asks the study's pruner. A `hydra.`
    override changes neither the job's config nor its name."""
    return f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"


def _ask(
    study: optuna.Study, space: Dict[str, BaseDistribution], n_trials: int, n_jobs: int, parent: Optional[str]
) -> List[optuna.Trial]:
    """Up to `n_jobs` new trials, none beyond the study's `n_trials` (a trial another sweep of the
    study asked first counts: one asked too many is marked surplus and told FAIL, never launched)."""
    trials: List[optuna.Trial] = []
    for _ in range(n_jobs):
        if _rank(study, math.inf) >= n_trials or grid_done(study):  # the study is full, or its grid done
            break
        trial = study.ask(space)
        if _rank(study, trial.number) >= n_trials:
            trial.set_user_attr(SURPLUS, True)
            told(study, trial, state=TrialState.FAIL)
            break
        if parent:
            trial.set_user_attr(PARENT, parent)
        trials.append(trial)
    return trials


def _rank(study: optuna.Study, number: float) -> int:
    """How many of the study's counted trials came before trial `number`."""
    return sum(1 for t in counted(study.get_trials(deepcopy=False)) if t.number < number)


def _tell(study: optuna.Study, trial: optuna.Trial, returned: JobReturn, metrics: List[str]) -> None:
    """A job that returned its objective's values completes its trial, one a pruner stopped prunes
    it, and a failed one (an error Hydra caught, or no value) fails it. The trial keeps the job's
    MLflow run."""
    outcome = returned.return_value if returned.status == JobStatus.COMPLETED else None
    if not isinstance(outcome, Outcome):
        told(study, trial, state=TrialState.FAIL)
        return
    if outcome.run_id:
        trial.set_user_attr(RUN, outcome.run_id)
    values = outcome.values(metrics)
    if outcome.pruned_at is not None:
        told(study, trial, state=TrialState.PRUNED)
    elif values is not None:
        told(study, trial, values=values)
    else:
        told(study, trial, state=TrialState.FAIL)
