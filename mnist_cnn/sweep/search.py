"""An Optuna search run by a Hydra sweeper (hydra_plugins/mnist_cnn_sweeper): ask Optuna for trials,
launch them as jobs through whatever launcher the sweep uses (basic, joblib, submitit, Slurm), tell
Optuna what each returned.

The search space is written in Hydra's own syntax (`choice(16, 32)`, `range(1, 9)`, `interval(0.1,
0.5)`, `tag(log, interval(1e-4, 1e-2))`), in `hydra.sweeper.params` or on the command line.

The study persists: beside a sqlite tracking store as an Optuna journal file (`mlflow.db` ->
`mlflow.db.optuna.journal`; Optuna's SQL tables would collide with MLflow's in one database), in the
sweep folder otherwise, or in `hydra.sweeper.storage` (an Optuna storage URL, or a journal file). Its
name is `sweep-<parent run id>` unless `hydra.sweeper.study_name` names one to share; both are tags
of the sweep's parent run. `n_trials` counts every trial of the study, so:
- `resume_sweep=` continues the same study: trials its stopped run left RUNNING are asked again
  first (each job then continues its own MLflow run) and the sampler's random state continues from
  where it was, instead of starting over from its seed;
- two sweeps sharing a study (two shells, two Slurm arrays) stop at exactly `n_trials` between
  them: a trial asked beyond that count is marked surplus and never launched.

Each job returns its Outcome: the trial completes with the values of objective.metrics (several
make the study multi-objective: the parent is then tagged with the runs on its Pareto front), is
pruned, or fails, and keeps the job's run. A job learns its trial's number from its environment
(MNIST_CNN_OPTUNA_TRIAL) and the study from the sweep file, so that it can report its epochs to
the study's pruner (sweep.prune). At the end the parent logs what mattered (fANOVA importances).
"""

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from mlflow.entities import Metric
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mnist_cnn import names
from mnist_cnn.config.job import STORAGE, STUDY, SWEEP_FILE, TRIAL_ENV, Outcome
from mnist_cnn.config.paths import sqlite_path
from mnist_cnn.config.schema import objectives
from mnist_cnn.sweep import plots
from mnist_cnn.tracking import store
from mnist_cnn.tracking.redact import redact

log = logging.getLogger(__name__)

PARENT, RUN = "mlflow_parent_run", "mlflow_run"  # trials' user attributes: the sweep's parent run, the job's run
REQUEUED, SURPLUS = "requeued", "surplus"  # and: asked again on resume_sweep; asked beyond n_trials
REPEATS = "repeats"  # and: the earlier trial whose values (and so result) it has
JOURNAL = ".optuna.journal"


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


def run_search(config: DictConfig, launcher: Any, arguments: List[str]) -> None:
    """The whole search: the study opened (or continued), then batches of `n_jobs` trials until the
    study holds `n_trials`; at the end, what mattered and (several objectives) the Pareto front."""
    options = config.hydra.sweeper
    space, fixed = search_space(options.params or {}, arguments)
    parent = _parent_run_id(config)
    client = store.connect(config.tracking.uri) if parent and config.tracking.enabled else None  # the parent's store
    study = _study(config, space, parent, client)
    metrics = [metric for metric, _ in objectives(config.objective)]
    job_index = 0
    while True:
        trials = _ask(study, space, options.n_trials, options.n_jobs, parent)
        if not trials:
            break
        if parent:  # saved before the jobs run: a resumed sweep draws after these trials, not them again
            study.set_user_attr(_random_key(parent), random_states(study.sampler))
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
    if client is None:
        return
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
        _told(study, trial, state=TrialState.PRUNED)
    else:
        _told(study, trial, values=earlier.values)
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


def tag_pareto_front(client: Any, parent: str, study: optuna.Study, metrics: List[str]) -> List[str]:
    """Tag the parent with each run on the study's Pareto front (`pareto_front.<run id>`: its
    values), replacing the tags of an earlier front; returns their run ids."""
    front = {t.user_attrs[RUN]: t.values for t in study.best_trials if RUN in t.user_attrs}
    for key in client.get_run(parent).data.tags:
        if key.startswith(names.PARETO_FRONT) and key.removeprefix(names.PARETO_FRONT) not in front:
            client.delete_tag(parent, key)
    for run_id, values in front.items():
        client.set_tag(parent, names.PARETO_FRONT + run_id, " ".join(f"{m}={v:.6g}" for m, v in zip(metrics, values)))
    count = f"{len(front)} run{'s' if len(front) != 1 else ''}"
    log.info("study %s: %s on the Pareto front of %s", study.study_name, count, ", ".join(metrics))
    return list(front)


def log_importances(client: Any, parent: str, study: optuna.Study, metrics: List[str]) -> Dict[str, float]:
    """What mattered: each searched key's share of each objective's variance over the completed
    trials (Optuna's fANOVA), as the parent's metrics `importance_<key>` (several objectives:
    `importance_<metric>/<key>`) and `sweep/importance.png`. An objective that never varied has
    nothing to rank (fANOVA would fail on it) and is left out."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    found: Dict[str, Dict[str, float]] = {}
    for i, metric in enumerate(metrics):
        if len({t.values[i] for t in completed}) < 2:
            log.info("no parameter importances for %s: fewer than two different values", metric)
            continue
        found[metric] = optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
            target=lambda t, i=i: t.values[i],
        )
    prefix = {m: names.IMPORTANCE + (f"{m}/" if len(metrics) > 1 else "") for m in metrics}
    logged = {prefix[m] + key: float(v) for m, importances in found.items() for key, v in importances.items()}
    if logged:
        now = int(time.time() * 1000)
        client.log_batch(parent, metrics=[Metric(key, value, now, 0) for key, value in logged.items()])
        client.log_figure(parent, plots.importance(found), "sweep/importance.png")
    return logged


def _ask(
    study: optuna.Study, space: Dict[str, BaseDistribution], n_trials: int, n_jobs: int, parent: Optional[str]
) -> List[optuna.Trial]:
    """Up to `n_jobs` new trials, none beyond the study's `n_trials` (a trial another sweep of the
    study asked first counts: one asked too many is marked surplus and told FAIL, never launched)."""
    trials: List[optuna.Trial] = []
    for _ in range(n_jobs):
        if _rank(study, math.inf) >= n_trials or _grid_done(study):  # the study is full, or its grid done
            break
        trial = study.ask(space)
        if _rank(study, trial.number) >= n_trials:
            trial.set_user_attr(SURPLUS, True)
            _told(study, trial, state=TrialState.FAIL)
            break
        if parent:
            trial.set_user_attr(PARENT, parent)
        trials.append(trial)
    return trials


def _rank(study: optuna.Study, number: float) -> int:
    """How many of the study's counted trials came before trial `number`."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and _counts(t))


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    return not (trial.user_attrs.get(SURPLUS) or trial.user_attrs.get(REQUEUED))


def _tell(study: optuna.Study, trial: optuna.Trial, returned: JobReturn, metrics: List[str]) -> None:
    """A job that returned its objective's values completes its trial, one a pruner stopped prunes
    it, and a failed one (an error Hydra caught, or no value) fails it. The trial keeps the job's
    MLflow run."""
    outcome = returned.return_value if returned.status == JobStatus.COMPLETED else None
    if not isinstance(outcome, Outcome):
        _told(study, trial, state=TrialState.FAIL)
        return
    if outcome.run_id:
        trial.set_user_attr(RUN, outcome.run_id)
    values = outcome.values(metrics)
    if outcome.pruned_at is not None:
        _told(study, trial, state=TrialState.PRUNED)
    elif values is not None:
        _told(study, trial, values=values)
    else:
        _told(study, trial, state=TrialState.FAIL)


def _told(study: optuna.Study, trial: Union[optuna.Trial, int], **result: Any) -> None:
    """`study.tell`. Told its grid's last point, a GridSampler asks the study to stop, which only
    `optimize` can (RuntimeError, Optuna issue #5141); the trial is stored by then, and `_ask`
    stops at an exhausted grid."""
    try:
        study.tell(trial, **result)
    except RuntimeError:
        if not _grid_done(study):
            raise


def _grid_done(study: optuna.Study) -> bool:
    return isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study)


def _study(
    config: DictConfig, space: Dict[str, BaseDistribution], parent: Optional[str], client: Optional[Any]
) -> optuna.Study:
    """The sweep's study, created or loaded; a resumed sweep's stopped trials are asked again first."""
    options = config.hydra.sweeper
    name = options.study_name or f"sweep-{parent or Path(config.hydra.sweep.dir).name}"
    location = options.storage or _default_storage(config)
    sampler_options = {"search_space": _grid(space)} if options.sampler._target_.endswith("GridSampler") else {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=open_storage(location),
        study_name=name,
        sampler=instantiate(options.sampler, **sampler_options),
        directions=[direction for _, direction in objectives(config.objective)],
        load_if_exists=True,
    )
    if config.resume_sweep and parent:
        _requeue_stopped(study, parent)
        saved = study.user_attrs.get(_random_key(parent))
        if saved:
            restore_random_states(study.sampler, saved)
    if client is not None:
        client.set_tag(parent, names.OPTUNA_STUDY, name)
        client.set_tag(parent, names.OPTUNA_STORAGE, redact(location))
        _share_with_jobs(config, name, location)
    log.info("Optuna study %s in %s: %d trials so far", name, redact(location), sum(map(_counts, study.trials)))
    return study


def _share_with_jobs(config: DictConfig, name: str, location: str) -> None:
    """Name the study in the sweep file, where the jobs look for it to report their epochs (native
    pruning). A storage URL with a password stays out of the file: its jobs prune from MLflow."""
    if redact(location) != location:
        log.info("the study's storage holds a password, which the sweep folder must not: jobs prune from MLflow")
        return
    path = Path(config.hydra.sweep.dir) / SWEEP_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), STUDY: name, STORAGE: location}))


def _default_storage(config: DictConfig) -> str:
    path = sqlite_path(config.tracking.uri) if config.tracking.enabled else None
    return str(path.expanduser().absolute()) + JOURNAL if path else str(Path(config.hydra.sweep.dir) / "optuna.journal")


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


def _grid(space: Dict[str, BaseDistribution]) -> Dict[str, List[Any]]:
    """GridSampler's search space: every searched key must be a choice."""
    if not all(isinstance(d, CategoricalDistribution) for d in space.values()):
        raise ValueError("hydra/sweeper/sampler=grid needs every searched key to be a choice(...)")
    return {key: list(d.choices) for key, d in space.items()}


def _requeue_stopped(study: optuna.Study, parent: str) -> None:
    """Trials this sweep left RUNNING when it was stopped: asked again first, with the same values,
    so that each job continues its own run; the stopped trial no longer counts."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(PARENT) == parent:
            study.enqueue_trial(trial.params, user_attrs={PARENT: parent})
            optuna.Trial(study, trial._trial_id).set_user_attr(REQUEUED, True)  # noqa: SLF001 - its storage id
            _told(study, trial.number, state=TrialState.FAIL)


def _parent_run_id(config: DictConfig) -> Optional[str]:
    """The sweep's parent run, which the sweep callback opened and wrote into the sweep folder."""
    path = Path(config.hydra.sweep.dir) / SWEEP_FILE
    return json.loads(path.read_text()).get("parent_run_id") if path.is_file() else None


def _random_key(parent: str) -> str:
    return f"sampler_random_state:{parent}"


def random_states(sampler: Any, path: str = "", depth: int = 3) -> Dict[str, list]:
    """The numpy random states a sampler (and the samplers inside it) draws from, as JSON."""
    found: Dict[str, list] = {}
    for name, value in vars(sampler).items():
        rng = getattr(value, "rng", None)
        if isinstance(rng, np.random.RandomState):
            kind, keys, position, has_gauss, gauss = rng.get_state()
            found[path + name] = [kind, keys.tolist(), position, has_gauss, gauss]
        elif depth and isinstance(value, optuna.samplers.BaseSampler):
            found |= random_states(value, f"{path}{name}.", depth - 1)
    return found


def restore_random_states(sampler: Any, saved: Dict[str, list]) -> None:
    """Put back what `random_states` saved: the sampler continues its sequence."""
    for path, (kind, keys, position, has_gauss, gauss) in saved.items():
        *owners, name = path.split(".")
        owner = sampler
        for attribute in owners:
            owner = getattr(owner, attribute)
        getattr(owner, name).rng.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
