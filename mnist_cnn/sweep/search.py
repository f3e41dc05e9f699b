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

import itertools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mnist_cnn import interrupts
from mnist_cnn.config.job import TRIAL_ENV
from mnist_cnn.config.schema import objectives
from mnist_cnn.errors import ConfigError
from mnist_cnn.runner.outcome import Outcome
from mnist_cnn.sweep.search_report import log_importances, tag_pareto_front
from mnist_cnn.sweep.study import PARENT, REPEATS, RUN, SURPLUS, counted, grid_done, open_study, told
from mnist_cnn.tracking import store

log = logging.getLogger(__name__)

STOP_WAIT_S = 120  # how long a stopped search waits for its running jobs to record their stop


def search_space(params: Dict[str, str], arguments: Sequence[str]) -> Tuple[Dict[str, BaseDistribution], List[str]]:
    """Optuna's distributions of the searched keys, and the overrides every trial shares. A key given
    a single value on the command line is fixed there, whatever `params` searches."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + list(arguments))
    space: Dict[str, BaseDistribution] = {}
    fixed: List[str] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            try:
                space[key] = distribution(override)
            except (ValueError, IndexError) as e:  # Optuna's checks (low > high, ...); an empty range
                reason = str(e).rstrip(".") if isinstance(e, ValueError) else "it holds no value"
                raise ConfigError(
                    f"{override.input_line}: not a search space Optuna can draw from ({reason}); fix it in "
                    "hydra.sweeper.params or on the command line."
                ) from None
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
    opened (or continued), then trials until the study holds `n_trials` (`n_jobs` in flight at a
    time); at the end, what mattered and (several objectives) the Pareto front."""
    options = config.hydra.sweeper
    space, fixed = search_space(options.params or {}, arguments)
    study = open_study(config, space, parent)
    metrics = [metric for metric, _ in objectives(config.objective)]
    search = Search(study, space, fixed, options.n_trials, parent, metrics)
    if options.asynchronous and side_by_side(launcher):
        as_workers_free(search, launcher, options.n_jobs)
    else:
        in_batches(search, launcher, options.n_jobs)
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


def side_by_side(launcher: Any) -> bool:
    """Whether `launcher` runs jobs side by side (joblib, submitit, Slurm), rather than one after
    another in this process (Hydra's basic launcher)."""
    return type(launcher).__name__ != "BasicLauncher"


@dataclass(frozen=True)
class Job:
    trial: optuna.Trial
    overrides: List[str]
    index: int  # Hydra's job number: its folder in the sweep folder


class Search:
    """The trials of one search, asked and told one at a time under a lock (jobs end in any order)."""

    def __init__(
        self,
        study: optuna.Study,
        space: Dict[str, BaseDistribution],
        fixed: List[str],
        n_trials: int,
        parent: Optional[str],
        metrics: List[str],
    ):
        self.study, self.space, self.fixed, self.n_trials = study, space, fixed, n_trials
        self.parent, self.metrics = parent, metrics
        self.lock, self.numbers = threading.Lock(), itertools.count()

    def ask(self) -> Optional[Job]:
        """The next trial to train, or None once the study holds `n_trials` (or its grid is done). A
        trial with the values of one this sweep finished is told that one's result instead."""
        with self.lock:
            while (trial := _ask(self.study, self.space, self.n_trials, self.parent)) is not None:
                if not _told_as_before(self.study, trial):
                    params = [f"{k}={v}" for k, v in trial.params.items()]
                    return Job(trial, [*self.fixed, *params, _trial_env(trial)], next(self.numbers))
            return None

    def tell(self, job: Job, returned: JobReturn) -> bool:
        """Tell the study how `job` ended; False for a job Ctrl-C or SIGTERM stopped, whose trial
        stays RUNNING (`resume_sweep=` asks it again): the search stops."""
        if returned.status == JobStatus.COMPLETED and getattr(returned.return_value, "stopped", False):
            return False
        with self.lock:
            _tell(self.study, job.trial, returned, self.metrics)
        return True


def in_batches(search: Search, launcher: Any, n_jobs: int) -> None:
    """`n_jobs` trials launched together, all told before the next are asked: Hydra's basic launcher
    runs them one after another in this process (or, with hydra.sweeper.asynchronous=false, any
    launcher waits for the slowest of each batch)."""
    while True:
        jobs = list(itertools.takewhile(lambda job: job is not None, (search.ask() for _ in range(n_jobs))))
        if not jobs:
            return
        returns = launcher.launch([job.overrides for job in jobs], initial_job_idx=jobs[0].index)
        if not all([search.tell(job, returned) for job, returned in zip(jobs, returns)]):  # every one told first
            raise KeyboardInterrupt("a job of the sweep was stopped")


def as_workers_free(search: Search, launcher: Any, n_jobs: int) -> None:
    """`n_jobs` trials in flight: each of `n_jobs` slots launches a trial's job, tells its result and
    asks the next at once, so no worker waits for the slowest job of a batch. Once a slot has no
    trial left (its worker idles from then on), the reports' imports are paid meanwhile. A stop
    (Ctrl-C, SIGTERM) is passed on to the running jobs, which end STOPPED after their current step
    and hand their stop back (raised, joblib would end the other workers' jobs unrecorded); their
    trials stay RUNNING, asked again by `resume_sweep=`. A job stopped on its own stops the search
    too: no trial starts after it. A slot whose job could not run (its worker died) stops the search
    once the others' jobs have ended, with that error."""
    stopping, one_free, errors = threading.Event(), threading.Event(), []

    def slot() -> None:
        try:
            while not stopping.is_set() and (job := search.ask()) is not None:
                returned = launcher.launch([job.overrides], initial_job_idx=job.index)[0]
                if not search.tell(job, returned):
                    errors.append(KeyboardInterrupt("a job of the sweep was stopped"))
                    stopping.set()
        except BaseException as e:  # noqa: BLE001 - a dead worker: ends the search
            errors.append(e)
            stopping.set()
        finally:
            one_free.set()

    slots = [threading.Thread(target=slot, name=f"trial-slot-{i}", daemon=True) for i in range(n_jobs)]
    for thread in slots:
        thread.start()
    try:
        one_free.wait()
        warm_up()
        for thread in slots:
            thread.join()
    except KeyboardInterrupt:
        stopping.set()
        interrupts.stop_children()
        for thread in slots:
            thread.join(timeout=STOP_WAIT_S)
        raise
    if errors:
        raise errors[0]


def warm_up() -> None:
    """Import what the reports need once the jobs have ended: pandas and matplotlib (the sweep's
    tables and figures), scikit-learn (Optuna's fANOVA importances)."""
    import mnist_cnn.sweep.report  # noqa: F401 - pandas and matplotlib: seconds, paid now instead of after the last job

    optuna.importance.FanovaImportanceEvaluator  # noqa: B018 - Optuna imports fANOVA, and scikit-learn, on first use


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
    override changes neither the job's config nor its name, and Hydra's launchers leave it out of
    the lines they print (`++hydra...` they showed: config.yaml declares the variable, so it goes without `++`)."""
    return f"hydra.job.env_set.{TRIAL_ENV}={trial.number}"


def _ask(
    study: optuna.Study, space: Dict[str, BaseDistribution], n_trials: int, parent: Optional[str]
) -> Optional[optuna.Trial]:
    """A new trial, or None beyond the study's `n_trials` (a trial another sweep of the study asked
    first counts: one asked too many is marked surplus and told FAIL, never launched)."""
    if _rank(study, math.inf) >= n_trials or grid_done(study):  # the study is full, or its grid done
        return None
    trial = study.ask(space)
    if _rank(study, trial.number) >= n_trials:
        trial.set_user_attr(SURPLUS, True)
        told(study, trial, state=TrialState.FAIL)
        return None
    if parent:
        trial.set_user_attr(PARENT, parent)
    return trial


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
