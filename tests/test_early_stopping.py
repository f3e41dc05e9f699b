"""Early stopping (trainer.early_stopping): the rule, a run that stops on a plateau with its best
epoch's weights, its resume to the same weights, and a sweep that is given what the run ended with."""

import optuna
import pytest

from mnist_cnn.engine.early_stopping import BestEpoch, EarlyStopping
from mnist_cnn.runner import train
from tests.helpers.interrupted import ctrl_c_in_epoch, resume
from tests.helpers.mlflow_store import history, only_run, runs_by_name
from tests.helpers.searches import search

PLATEAU = ("trainer.epochs=10", "trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.01")
ON_LOSS = ("objective.metrics=[val_loss]", "objective.directions=[minimize]", "tracking.log_model=false")


def epochs(*values: float) -> list:
    return [{"val_loss": v} for v in values]


def test_the_best_epoch_is_the_last_that_improved_by_more_than_min_delta():
    rule = EarlyStopping("val_loss", "minimize", min_delta=0.01, patience=2)
    assert rule.best_epoch(epochs(0.5, 0.3, 0.295, 0.291)) == 2  # 0.005 and 0.009 less: not more than min_delta
    assert not rule.stops(epochs(0.5, 0.3, 0.295))
    assert rule.stops(epochs(0.5, 0.3, 0.295, 0.291))
    assert EarlyStopping("val_acc", "maximize", 0.0, 1).best_epoch([{"val_acc": a} for a in (0.9, 0.95, 0.95)]) == 2


def test_epochs_are_ranked_best_first_by_the_same_rule_as_early_stopping():
    """trainer.keep_best and register_from=best rank by it: epoch 4's lower loss is no gain over epoch 3's."""
    rule = BestEpoch("val_loss", "minimize", min_delta=0.01)
    assert rule.ranked(epochs(0.5, 0.3, 0.295, 0.291)) == [2, 3, 4, 1]
    assert BestEpoch("val_acc", "maximize", 0.0).ranked([{"val_acc": a} for a in (0.9, 0.95, 0.95)]) == [2, 3, 1]


@pytest.mark.slow
def test_a_run_on_a_plateau_stops_early_finished_with_its_best_epochs_weights(tiny_cfg, store_uri, tmp_path):
    """On the tiny data val_loss falls by less than 0.01 an epoch from epoch 3 on: the best epoch is
    2, and the run stops after epoch 4, FINISHED, testing and returning epoch 2's model."""
    outcome = train.run(tiny_cfg(*PLATEAU, *ON_LOSS), tmp_path / "out")
    run = only_run(store_uri)
    losses = [value for _, value in history(store_uri, run.info.run_id)["val_loss"]]
    assert run.info.status == "FINISHED" and len(losses) == 4 < 10
    assert run.data.tags["stopped_early_at_epoch"] == "4" and run.data.tags["restored_epoch"] == "2"
    assert outcome.metrics["val_loss"] == losses[1] != losses[-1]  # what the sweeper gets: epoch 2's value
    assert run.data.metrics["test_acc"] == outcome.metrics["test_acc"]


@pytest.mark.slow
def test_without_restore_best_the_run_ends_with_its_last_epochs_weights(tiny_cfg, store_uri, tmp_path):
    outcome = train.run(tiny_cfg(*PLATEAU, *ON_LOSS, "trainer.restore_best=false"), tmp_path / "out")
    run = only_run(store_uri)
    assert run.data.tags["stopped_early_at_epoch"] == "4" and "restored_epoch" not in run.data.tags
    assert outcome.metrics["val_loss"] == history(store_uri, run.info.run_id)["val_loss"][-1][1]


@pytest.mark.slow
def test_a_run_stopped_in_epoch_3_resumes_to_the_same_early_stop_and_weights(tiny_cfg, store_uri, tmp_path):
    """The best epoch's weights travel in the checkpoint: the resumed run restores the same ones."""
    train.run(tiny_cfg(*PLATEAU, *ON_LOSS, "tracking.run_name=full"), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(*PLATEAU, *ON_LOSS, "tracking.run_name=cut"), tmp_path / "cut", **ctrl_c_in_epoch(3))
    cut_id = runs_by_name(store_uri)["cut"].info.run_id
    resume(tiny_cfg(), cut_id)
    runs = runs_by_name(store_uri)
    full, cut = runs["full"].data.tags, runs["cut"].data.tags
    assert cut["resumed_at_epoch"] == "3" and runs["cut"].info.status == "FINISHED"
    for tag in ("stopped_early_at_epoch", "restored_epoch", "weights_sha256"):
        assert cut[tag] == full[tag], tag


@pytest.mark.slow
def test_an_optuna_search_is_given_what_its_early_stopped_runs_ended_with(tiny_root, store_uri, tmp_path):
    """With a pruner too: each trial's value, and the parent's best, are the restored epoch's val_loss."""
    parent, runs, study, _ = search(
        tiny_root,
        store_uri,
        tmp_path,
        "hparams_search=lr_batch",
        "hydra.sweeper.n_trials=3",
        "objective.pruner=median",
        "objective.prune_min_runs=1",
        *PLATEAU,
        *ON_LOSS,
    )
    ended = {}
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        run = runs[trial.user_attrs["mlflow_run"]]
        epoch = int(run.data.tags.get("restored_epoch", len(history(store_uri, run.info.run_id)["val_loss"])))
        ended[run.info.run_id] = dict(history(store_uri, run.info.run_id)["val_loss"])[epoch]
        assert trial.values == [ended[run.info.run_id]]
    assert any("stopped_early_at_epoch" in r.data.tags for r in runs.values())
    assert parent.data.metrics["best_val_loss"] == min(ended.values())
