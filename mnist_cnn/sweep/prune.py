"""Stop a sweep's hopeless jobs early with Optuna's pruners (objective.pruner): `median`,
`hyperband`, `successive_halving`, or `patient` (Optuna's PatientPruner around the median: it may
prune a job only once its last objective.prune_patience + 1 epochs all fell short of its best
before them).

A job's pruner is an epoch hook (runner.hooks) that the command line hands to the runner; it is
asked after each epoch but the last, in one of two ways, chosen by what the job can reach:
- in the study: a job of an Optuna search whose machine can open the study's storage (its context
  names its trial: the study from the sweep file, the number from the search) reports each epoch
  to its own trial, and the study's pruner judges it against the study's other trials;
- from MLflow: any other sweep (a grid of the basic sweeper, or jobs on machines that cannot
  reach the storage) reads its siblings (the other children of the sweep's parent run) from the
  store and replays them, in the order they started, into a study built in memory: each sibling
  becomes a trial that reports its per-epoch metric and ends as it ended (finished, pruned,
  failed, or still running); the job's own history is reported last, and the pruner decides.
Either way the rule is Optuna's, judged on the first of objective.metrics, and no job is pruned
before objective.prune_min_runs jobs have finished. A pruned job's run ends PRUNED (MLflow's
KILLED, tagged `pruned_at_epoch`), and an Optuna search marks its trial PRUNED.
"""

import logging
import warnings
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional

from mlflow.entities import Run
from omegaconf import DictConfig

from mnist_cnn.config.job import JobContext, Trial
from mnist_cnn.config.schema import first_objective
from mnist_cnn.runner.hooks import EpochHook, History
from mnist_cnn.tracking.lookup import children
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.states import RunState, state_of
from mnist_cnn.tracking.tracker import Tracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class Pruner(EpochHook):
    """A sweep's pruner: asked after each epoch but the last; a stop ends the run PRUNED."""

    ends = RunState.PRUNED

    def __init__(self, cfg: DictConfig):
        self.objective, self.epochs = cfg.objective, cfg.trainer.epochs

    def should_stop(self, history: History) -> bool:
        return len(history) < self.epochs and self.should_prune(list(history))

    def should_prune(self, history: List[Dict[str, float]]) -> bool:
        raise NotImplementedError


class TrialPruner(Pruner):
    """Reports each epoch of one job of an Optuna search to its own trial and asks the study's pruner."""

    def __init__(self, cfg: DictConfig, trial: "optuna.Trial", reported: Iterable[int]):
        super().__init__(cfg)
        self.metric, self.min_runs, self.trial = first_objective(cfg.objective)[0], cfg.objective.prune_min_runs, trial
        self.reported = set(reported)  # the epochs the trial has: a resumed job's earlier ones

    def should_prune(self, history: List[Dict[str, float]]) -> bool:
        """True when the study's pruner would stop this job, whose epochs so far are `history`. A
        study that cannot be reached now prunes nothing: the run goes on, and reports the epochs it
        missed once it can."""
        try:
            return self._judge(history)
        except Exception as e:  # noqa: BLE001 - a journal file or a database: the run must not die of it
            log.warning("not pruned after epoch %d: the study did not answer (%s)", len(history), redact(str(e))[:200])
            return False

    def _judge(self, history: List[Dict[str, float]]) -> bool:
        import optuna  # slow to import, and only the jobs of a pruned sweep need it

        for epoch, metrics in enumerate(history, start=1):
            if epoch not in self.reported:  # a job continued from a checkpoint reports its earlier epochs too
                self.trial.report(metrics[self.metric], epoch)
                self.reported.add(epoch)
        judged = self.trial.should_prune()  # asked even when too early: Hyperband records the rungs a trial reached
        finished = self.trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return judged and len(finished) >= self.min_runs


class MlflowPruner(Pruner):
    """Replays, after each epoch of one sweep job, its siblings' histories from MLflow into a study
    in memory, and asks the pruner whether to stop the job."""

    def __init__(self, cfg: DictConfig, parent_run_id: str):
        super().__init__(cfg)
        self.parent, self.tracker = parent_run_id, Tracker(None, None)

    def opened(self, tracker: Tracker) -> None:
        self.tracker = tracker  # its store, and its run: not a sibling

    def should_prune(self, history: List[Dict[str, float]]) -> bool:
        """True when the pruner would stop this job, whose epochs so far are `history`."""
        metric, _ = first_objective(self.objective)
        client = self.tracker.client
        siblings = [r for r in children(client, self.parent) if r.info.run_id != self.tracker.run_id]
        finished = sum(state_of(r) is RunState.FINISHED for r in siblings)
        if finished < self.objective.prune_min_runs:
            return False
        histories = {
            r.info.run_id: {m.step: m.value for m in client.get_metric_history(r.info.run_id, metric)} for r in siblings
        }
        own = {epoch: metrics[metric] for epoch, metrics in enumerate(history, start=1)}
        return self._replay(siblings, histories, own)

    def _replay(self, siblings: List[Run], histories: Dict[str, Dict[int, float]], own: Dict[int, float]) -> bool:
        import optuna  # see TrialPruner.should_prune

        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Trial 3 finished" for replayed siblings
        try:
            study = optuna.create_study(
                study_name=f"sweep-{self.parent}",
                direction=first_objective(self.objective)[1],
                pruner=make_pruner(self.objective, self.epochs),
            )
            for run in siblings:
                _replay_trial(study, run, histories[run.info.run_id])
            trial = study.ask()
            for step, value in own.items():
                trial.report(value, step)
            return trial.should_prune()
        finally:
            optuna.logging.set_verbosity(verbosity)


def make_pruner(objective: DictConfig, epochs: int) -> "optuna.pruners.BasePruner":
    """objective.pruner as Optuna's. Epochs 1..prune_warmup_epochs are never pruned (Optuna counts
    steps as given: our epochs, from 1); the MedianPruner's own start-up count is 0 because
    prune_min_runs gates every pruner alike."""
    import optuna  # see TrialPruner.should_prune

    first_prunable = objective.prune_warmup_epochs + 1
    median = optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=first_prunable)
    return {
        "median": lambda: median,
        "patient": lambda: _patient(median, objective.prune_patience),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=first_prunable),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            min_resource=first_prunable, max_resource=max(epochs, first_prunable)
        ),
    }[str(objective.pruner)]()


def _patient(wrapped: "optuna.pruners.BasePruner", patience: int) -> "optuna.pruners.BasePruner":
    import optuna  # see TrialPruner.should_prune

    with warnings.catch_warnings():  # "experimental" since Optuna 2.8, and said in every job's log otherwise
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.PatientPruner(wrapped, patience=patience)


def _replay_trial(study: "optuna.Study", run: Run, history: Dict[int, float]) -> None:
    """One sibling as a trial: its epochs reported (and judged, which is how Hyperband records the
    rungs a trial reached), then ended as the run ended."""
    import optuna  # see TrialPruner.should_prune

    trial = study.ask()
    for step in sorted(history):
        trial.report(history[step], step)
        trial.should_prune()
    state = state_of(run)
    if state is RunState.FINISHED and history:
        study.tell(trial, history[max(history)])
    elif state is RunState.PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif state.failed:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    # stopped by a signal, stale or still running: the trial stays running, as the job may continue


def pruner_hooks(cfg: DictConfig, ctx: JobContext) -> List[EpochHook]:
    """The pruner of job `ctx`: in its study when it can reach it, else from MLflow; none when
    pruning is off or this is not a tracked sweep's job."""
    if cfg.objective.pruner == "none":
        return []
    if ctx.sweep is None:
        log.info(
            "objective.pruner=%s applies to the jobs of a tracked sweep (-m); this run is not pruned",
            cfg.objective.pruner,
        )
        return []
    return [(ctx.trial and _in_study(cfg, ctx.trial)) or MlflowPruner(cfg, ctx.sweep.parent_run_id)]


def _in_study(cfg: DictConfig, trial: Trial) -> Optional[TrialPruner]:
    """The pruner of this job's trial in its Optuna search's study, or None (with the reason in the
    log) when this machine cannot reach the study or the trial no longer runs."""
    import optuna  # see TrialPruner.should_prune

    from mnist_cnn.sweep.study import open_storage  # Optuna: only for a search's pruned jobs

    study = trial.study
    try:
        storage = open_storage(study.storage, create=False)
        loaded = optuna.load_study(
            study_name=study.name, storage=storage, pruner=make_pruner(cfg.objective, cfg.trainer.epochs)
        )
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.name), trial.number
        )
        frozen = storage.get_trial(trial_id)
    except Exception as e:  # noqa: BLE001 - a file, a database or a network that this machine cannot reach
        log.info(
            "pruning from MLflow: this machine cannot open trial %s of study %s (%s)",
            trial.number,
            study.name,
            type(e).__name__,
        )
        return None
    if frozen.state != optuna.trial.TrialState.RUNNING:
        log.info("pruning from MLflow: trial %s of study %s is not running", trial.number, study.name)
        return None
    log.info("pruning in study %s: this job is its trial %s", study.name, trial.number)
    return TrialPruner(cfg, optuna.Trial(loaded, trial_id), frozen.intermediate_values)
