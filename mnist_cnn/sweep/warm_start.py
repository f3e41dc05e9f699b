"""Warm-start the Optuna sweeper of a resumed sweep: its study starts from the jobs that sweep
already did (used by the sweeper plugin in hydra_plugins/mnist_cnn_sweeper).

The plugin's own SQL storage, the usual way to resume a study, does not work next to MLflow
(SQLAlchemy 2), so the MLflow store is the record: every child of the parent run that finished,
was pruned or failed is added to an in-memory study (`study.add_trial`) and counts towards
`n_trials`; a job stopped midway is asked again first (`study.enqueue_trial`), so that it
continues its own run.
"""

import math
import warnings
from typing import Any, Dict, List

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from mlflow.entities import Run
from omegaconf import DictConfig
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    IntLogUniformDistribution,
    IntUniformDistribution,
)
from optuna.trial import TrialState

from mnist_cnn.names import PRUNED_AT
from mnist_cnn.sweep.parent import children
from mnist_cnn.tracking import store


def warm_start(impl: Any, config: DictConfig, arguments: List[str]) -> None:
    """Give the plugin's sweeper `impl` a storage holding the study so far (the children of sweep
    `config.resume_sweep`), and the number of trials still to run."""
    params = [f"{k}={v}" for k, v in (impl.params or {}).items()] + arguments
    distributions, fixed = create_params_from_overrides(params)
    distributions = {k: d for k, d in distributions.items() if k not in fixed}  # as the plugin does: a fixed value wins
    impl.study_name = impl.study_name or f"sweep-{config.resume_sweep}"
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name=impl.study_name, direction=str(config.objective.direction))
    done = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for job in children(store.connect(config.tracking.uri), config.resume_sweep):
            values = _trial_params(job, distributions)
            if _is_done(job):
                study.add_trial(_as_trial(job, values, distributions, str(config.objective.metric)))
                done += 1
            elif values is not None:
                study.enqueue_trial(values)  # stopped midway: asked again first, and continues its run
    impl.storage, impl.n_trials = storage, max(impl.n_trials - done, 0)
    seed = config.hydra.sweeper.sampler.get("seed")
    if seed is not None:  # a sampler seeded as before would propose the trials already done, again
        impl.sampler = instantiate(config.hydra.sweeper.sampler, seed=seed + done)


def _is_done(job: Run) -> bool:
    return job.info.status in ("FINISHED", "FAILED") or PRUNED_AT in job.data.tags


def _trial_params(job: Run, distributions: Dict[str, BaseDistribution]) -> Dict[str, Any] | None:
    """The values a job was given for the searched keys, typed as Optuna sampled them; None when the
    job recorded none (it failed before its run opened)."""
    values = {}
    for key, distribution in distributions.items():
        logged = job.data.params.get(key)
        if logged is None:
            return None
        if isinstance(distribution, CategoricalDistribution):
            values[key] = next(c for c in distribution.choices if str(c) == logged)
        elif isinstance(distribution, (IntUniformDistribution, IntLogUniformDistribution)):
            values[key] = int(logged)
        else:
            values[key] = float(logged)
    return values


def _as_trial(
    job: Run, values: Dict[str, Any] | None, distributions: Dict[str, BaseDistribution], metric: str
) -> optuna.trial.FrozenTrial:
    value = job.data.metrics.get(metric, math.nan)
    if job.info.status == "FAILED" or values is None or math.isnan(value):
        return optuna.trial.create_trial(
            state=TrialState.FAIL, params=values or {}, distributions=distributions if values else {}
        )
    return optuna.trial.create_trial(params=values, distributions=distributions, value=value)
