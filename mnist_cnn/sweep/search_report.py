"""What an Optuna search found, logged on its sweep's parent run when the search ends: the runs on
a multi-objective study's Pareto front (tags) and what mattered (fANOVA importances, metrics and a
figure)."""

import logging
import time
from typing import Any, Dict, List

import optuna
from mlflow.entities import Metric
from optuna.trial import TrialState

from mnist_cnn import names
from mnist_cnn.sweep.study import RUN

log = logging.getLogger(__name__)

TRIALS_PER_KEY = 10  # fANOVA fits a forest to the trials: with fewer per searched key, its shares are noise


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
    for metric, importances in found.items():
        log.info("%s", importance_lines(metric, importances, len(completed)))
    from mnist_cnn.sweep import plots  # matplotlib: only once the search has ended

    prefix = {m: names.IMPORTANCE + (f"{m}/" if len(metrics) > 1 else "") for m in metrics}
    logged = {prefix[m] + key: float(v) for m, importances in found.items() for key, v in importances.items()}
    if logged:
        now = int(time.time() * 1000)
        client.log_batch(parent, metrics=[Metric(key, value, now, 0) for key, value in logged.items()])
        client.log_figure(parent, plots.importance(found), "sweep/importance.png")
    return logged


def importance_lines(metric: str, importances: Dict[str, float], trials: int) -> str:
    """What mattered to `metric`, a key a line, and whether `trials` are enough for it to mean much."""
    enough = TRIALS_PER_KEY * len(importances)
    caveat = (
        f"; too few to mean much: about {enough} would be, {TRIALS_PER_KEY} per searched key" if trials < enough else ""
    )
    width = max(len(key) for key in importances)
    lines = [f"  {key:<{width}}  {share:.2f}" for key, share in importances.items()]
    return "\n".join([f"what mattered to {metric} (fANOVA over {trials} completed trials{caveat}):", *lines])
