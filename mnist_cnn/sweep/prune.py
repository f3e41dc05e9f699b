"""Stop a sweep's hopeless jobs early with Optuna's own pruners, under any launcher.

After each epoch a job reads its siblings (the other children of its sweep's parent run) from the
MLflow store and replays them, in the order they started, into an Optuna study built in memory:
each sibling becomes a trial that reports its per-epoch `objective.metric` and ends as it ended
(finished, pruned, failed, or still running). The job's own history is reported last, and
Optuna's `MedianPruner` or `HyperbandPruner` decides. The rule is Optuna's; only the record of
the trials comes from MLflow, so no launcher or shared Optuna storage has to cooperate.
"""

import logging
import warnings
from typing import TYPE_CHECKING, Dict, List, Optional

from mlflow import MlflowClient
from mlflow.entities import Run
from omegaconf import DictConfig

from mnist_cnn.config.job import sweep_info
from mnist_cnn.names import PRUNED_AT
from mnist_cnn.sweep.parent import children

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class SweepPruner:
    """Asks Optuna, after each epoch of one sweep job, whether to stop it."""

    def __init__(self, cfg: DictConfig, parent_run_id: str):
        self.objective, self.epochs, self.parent = cfg.objective, cfg.trainer.epochs, parent_run_id

    def should_prune(self, client: MlflowClient, run_id: str, history: List[Dict[str, float]]) -> bool:
        """True when the pruner would stop this job, whose epochs so far are `history`."""
        metric = str(self.objective.metric)
        siblings = [r for r in children(client, self.parent) if r.info.run_id != run_id]
        finished = sum(r.info.status == "FINISHED" for r in siblings)
        if finished < self.objective.prune_min_runs:
            return False
        histories = {
            r.info.run_id: {m.step: m.value for m in client.get_metric_history(r.info.run_id, metric)} for r in siblings
        }
        own = {epoch: metrics[metric] for epoch, metrics in enumerate(history, start=1)}
        return self._replay(siblings, histories, own)

    def _replay(self, siblings: List[Run], histories: Dict[str, Dict[int, float]], own: Dict[int, float]) -> bool:
        import optuna  # slow to import, and only the jobs of a pruned sweep need it

        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Trial 3 finished" for replayed siblings
        try:
            study = optuna.create_study(
                study_name=f"sweep-{self.parent}", direction=str(self.objective.direction), pruner=self._pruner()
            )
            for run in siblings:
                _replay_trial(study, run, histories[run.info.run_id])
            trial = study.ask()
            for step, value in own.items():
                trial.report(value, step)
            return trial.should_prune()
        finally:
            optuna.logging.set_verbosity(verbosity)

    def _pruner(self) -> "optuna.pruners.BasePruner":
        """Epochs 1..prune_warmup_epochs are never pruned (Optuna counts steps as given: our epochs, from 1)."""
        import optuna  # see _replay

        first_prunable = self.objective.prune_warmup_epochs + 1
        if self.objective.pruner == "median":
            # prune_min_runs gates above
            return optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=first_prunable)
        return optuna.pruners.HyperbandPruner(
            min_resource=first_prunable, max_resource=max(self.epochs, first_prunable)
        )


def _replay_trial(study: "optuna.Study", run: Run, history: Dict[int, float]) -> None:
    """One sibling as a trial: its epochs reported (and judged, which is how Hyperband records the
    rungs a trial reached), then ended as the run ended."""
    import optuna  # see SweepPruner._replay

    trial = study.ask()
    for step in sorted(history):
        trial.report(history[step], step)
        trial.should_prune()
    if run.info.status == "FINISHED" and history:
        study.tell(trial, history[max(history)])
    elif PRUNED_AT in run.data.tags:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif run.info.status == "FAILED":
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    # KILLED by a signal or still RUNNING: the trial stays running, as the job does


def sweep_pruner(cfg: DictConfig) -> Optional[SweepPruner]:
    """The pruner of this job, or None when pruning is off or this is not a tracked sweep's job."""
    if cfg.objective.pruner == "none":
        return None
    parent = sweep_info().get("parent_run_id")
    if parent is None:
        log.info(
            "objective.pruner=%s applies to the jobs of a tracked sweep (-m); this run is not pruned",
            cfg.objective.pruner,
        )
        return None
    import optuna  # see SweepPruner._replay

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # ask/tell in optuna 2.x
    return SweepPruner(cfg, parent)
