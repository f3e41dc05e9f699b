"""Pruning a sweep's hopeless jobs with Optuna's pruners: judged in an Optuna search's own study,
or on the siblings' MLflow histories; the champion and the report of a pruned sweep."""

import time
import uuid

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mnist_cnn.config.job import JobContext, Study, SweepFile, Trial
from mnist_cnn.runner import train
from mnist_cnn.runner.hooks import EpochHook
from mnist_cnn.sweep import prune
from mnist_cnn.sweep.prune import MlflowPruner, TrialPruner, make_pruner
from mnist_cnn.sweep.study import open_storage
from mnist_cnn.tracking.states import RunState
from mnist_cnn.tracking.tracker import Tracker
from tests.helpers import processes
from tests.helpers.mlflow_store import only_run
from tests.helpers.mlflow_store import runs as runs_in
from tests.helpers.searches import search

GOOD = ([0.50, 0.80, 0.90], [0.60, 0.85, 0.92], [0.55, 0.82, 0.91])  # three finished siblings' val_acc
DECLINING = [0.12, 0.11, 0.10]  # far behind, and worse for two epochs than before: every pruner stops it


def sweep_of(uri: str, *histories, statuses=None):
    """A parent run and one child per history (FINISHED unless `statuses` says otherwise), plus a
    RUNNING child for the job being judged; returns (client, parent id, judged run id)."""
    client = MlflowClient(uri)
    experiment = client.create_experiment(f"pruning-{uuid.uuid4().hex}")
    parent = client.create_run(experiment).info.run_id
    child = {"mlflow.parentRunId": parent}
    for i, values in enumerate(histories):
        run_id = client.create_run(experiment, tags=child, start_time=1000 + i).info.run_id
        client.log_batch(run_id, metrics=[Metric("val_acc", v, 0, step) for step, v in enumerate(values, start=1)])
        client.set_terminated(run_id, (statuses or {}).get(i, "FINISHED"))
    judged = client.create_run(experiment, tags=child, start_time=2000).info.run_id
    return client, parent, judged


def judge(tiny_cfg, uri, own, *histories, statuses=None, **settings):
    overrides = [f"objective.{key}={value}" for key, value in settings.items()]
    cfg = tiny_cfg("trainer.epochs=3", *overrides)
    client, parent, judged = sweep_of(uri, *histories, statuses=statuses)
    pruner = MlflowPruner(cfg, parent)
    pruner.opened(Tracker(client, judged, uri))  # the judged job's run, once it is recorded
    return pruner.should_prune([{"val_acc": v} for v in own])


PRUNERS = {"median": {}, "hyperband": {}, "successive_halving": {}, "patient": {"prune_patience": 1}}


@pytest.mark.parametrize("pruner", PRUNERS)
def test_a_job_far_behind_its_finished_siblings_is_pruned_and_a_good_one_is_not(tiny_cfg, store_uri, pruner):
    assert judge(tiny_cfg, store_uri, DECLINING, *GOOD, pruner=pruner, **PRUNERS[pruner])
    assert not judge(tiny_cfg, store_uri, [0.60, 0.90], *GOOD, pruner=pruner, **PRUNERS[pruner])


def test_the_patient_pruner_spares_a_job_that_is_still_improving(tiny_cfg, store_uri):
    """Far behind but still improving: the median prunes it, the patient pruner waits."""
    assert judge(tiny_cfg, store_uri, [0.10, 0.12, 0.14], *GOOD, pruner="median")
    assert not judge(tiny_cfg, store_uri, [0.10, 0.12, 0.14], *GOOD, pruner="patient", prune_patience=1)


def test_median_pruning_waits_for_the_warmup_epochs_and_enough_finished_siblings(tiny_cfg, store_uri):
    assert not judge(tiny_cfg, store_uri, [0.10], *GOOD, pruner="median")  # epoch 1 is warmup
    assert judge(tiny_cfg, store_uri, [0.10], *GOOD, pruner="median", prune_warmup_epochs=0)
    assert not judge(tiny_cfg, store_uri, [0.10, 0.12], *GOOD[:2], pruner="median")  # 2 finished < prune_min_runs 3
    assert judge(tiny_cfg, store_uri, [0.10, 0.12], *GOOD[:2], pruner="median", prune_min_runs=2)
    # a failed or stopped sibling is no yardstick: only the finished ones count
    assert not judge(tiny_cfg, store_uri, [0.10, 0.12], *GOOD, statuses={0: "FAILED"}, pruner="median")


def study_with(histories, *, pruner=None, storage=None, name="s"):
    """An Optuna study whose first trials report `histories` (epochs from 1) and complete with their last value."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner)
    for values in histories:
        trial = study.ask()
        for step, value in enumerate(values, start=1):
            trial.report(value, step)
            trial.should_prune()  # as each job asks: Hyperband records the rungs it reached
        study.tell(trial, values[-1])
    return study


@pytest.mark.parametrize("pruner", PRUNERS)
def test_a_search_job_reports_its_epochs_to_its_trial_and_its_study_prunes_it(tiny_cfg, pruner):
    """The job's own trial gets each epoch once, even when it continues from a checkpoint (its
    trial already had epoch 1); the study's pruner judges it against the completed trials."""
    options = [f"objective.{k}={v}" for k, v in PRUNERS[pruner].items()]
    cfg = tiny_cfg("trainer.epochs=4", f"objective.pruner={pruner}", *options)
    study = study_with(GOOD, pruner=make_pruner(cfg.objective, 4))
    trial = study.ask()
    trial.report(0.12, 1)  # reported before the job was stopped and continued: kept, not reported again
    assert TrialPruner(cfg, trial, reported=[1]).should_prune([{"val_acc": v} for v in DECLINING])
    assert study.trials[-1].intermediate_values == {1: 0.12, 2: 0.11, 3: 0.10}
    good = study.ask()
    assert not TrialPruner(cfg, good, reported=[]).should_prune([{"val_acc": 0.6}, {"val_acc": 0.9}])


def test_a_study_that_stops_answering_prunes_nothing_and_the_run_goes_on(tiny_cfg, monkeypatch, caplog):
    cfg = tiny_cfg("trainer.epochs=3", "objective.pruner=median")
    study = study_with(GOOD, pruner=make_pruner(cfg.objective, 3))
    trial = study.ask()

    def unreachable(value, step):
        raise OSError("No such file or directory: '/shared/mlflow.db.optuna.journal'")

    monkeypatch.setattr(trial, "report", unreachable)
    assert not TrialPruner(cfg, trial, reported=[]).should_prune([{"val_acc": v} for v in DECLINING])
    assert "not pruned after epoch 3: the study did not answer (No such file or directory" in caplog.text


def test_a_search_job_is_not_pruned_before_enough_trials_completed(tiny_cfg):
    cfg = tiny_cfg("trainer.epochs=3", "objective.pruner=median")
    study = study_with(GOOD[:2], pruner=make_pruner(cfg.objective, 3))  # 2 completed < prune_min_runs 3
    assert not TrialPruner(cfg, study.ask(), reported=[]).should_prune([{"val_acc": 0.1}] * 2)


def test_a_job_prunes_in_its_study_when_it_can_reach_it_and_from_mlflow_otherwise(tiny_cfg, tmp_path):
    """The choice is made for each job: its trial (the study from the sweep file, the number from the
    search) in a study it can open and find that trial RUNNING in; else the MLflow pruner, and the
    journal is not created."""
    cfg = tiny_cfg("trainer.epochs=3", "objective.pruner=median")
    journal = tmp_path / "study.journal"
    study = study_with(GOOD, storage=open_storage(str(journal)), name="search")
    running = study.ask()
    here = Study("search", str(journal))

    def pruner(trial=None):
        sweep = SweepFile("p", ("optimizer.lr",), here)
        (hook,) = prune.pruner_hooks(cfg, JobContext(multirun=True, sweep=sweep, trial=trial))
        return hook

    assert isinstance(pruner(), MlflowPruner)  # a grid: no trial
    assert isinstance(pruner(Trial(here, running.number)), TrialPruner)
    assert isinstance(pruner(Trial(here, 0)), MlflowPruner)  # a completed trial: not this job's
    elsewhere = Study("search", str(tmp_path / "elsewhere" / "study.journal"))  # another machine's disk
    assert isinstance(pruner(Trial(elsewhere, running.number)), MlflowPruner) and not (tmp_path / "elsewhere").exists()
    assert prune.pruner_hooks(cfg, JobContext()) == []  # not a sweep's job: nothing to prune against


def test_a_lower_loss_is_better_when_the_objective_is_minimized(tiny_cfg, store_uri):
    losses = ([0.9, 0.5, 0.3], [0.8, 0.4, 0.2], [0.85, 0.45, 0.25])
    client, parent, judged = sweep_of(store_uri)
    for values in losses:  # the same shape as above, on val_loss
        run_id = client.create_run(
            client.get_run(parent).info.experiment_id, tags={"mlflow.parentRunId": parent}
        ).info.run_id
        client.log_batch(run_id, metrics=[Metric("val_loss", v, 0, step) for step, v in enumerate(values, start=1)])
        client.set_terminated(run_id)
    cfg = tiny_cfg(
        "trainer.epochs=3", "objective.pruner=median", "objective.metrics=[val_loss]", "objective.directions=[minimize]"
    )
    pruner = MlflowPruner(cfg, parent)
    pruner.opened(Tracker(client, judged, store_uri))
    assert pruner.should_prune([{"val_loss": 2.3}, {"val_loss": 2.3}])
    assert not pruner.should_prune([{"val_loss": 0.7}, {"val_loss": 0.3}])


def test_a_pruned_job_ends_killed_and_gives_the_sweeper_its_last_value(tiny_cfg, store_uri, tmp_path):
    """A pruner that prunes after epoch 1: the run ends KILLED with `pruned_at_epoch`, and `run` returns
    that epoch's metrics, its run and the epoch (mnist-cnn-train hands them to the sweeper)."""

    class Prunes(EpochHook):
        ends = RunState.PRUNED

        def should_stop(self, history):
            return True

    outcome = train.run(tiny_cfg("trainer.epochs=3", "tracking.log_model=false"), tmp_path / "out", hooks=[Prunes()])
    run = only_run(store_uri)
    assert run.info.status == "KILLED" and run.data.tags["pruned_at_epoch"] == "1"
    assert outcome.metrics["val_acc"] == run.data.metrics["val_acc"] and "test_acc" not in outcome.metrics
    assert (outcome.run_id, outcome.pruned_at) == (run.info.run_id, 1)


@pytest.mark.slow
def test_a_grid_prunes_its_hopeless_jobs_crowns_the_best_and_its_resume_keeps_them(tiny_root, store_uri, tmp_path):
    """The issue's grid on tiny data: lr 1e-6 and 2e-6 cannot learn in 3 epochs; the three good
    learning rates finish, the two hopeless ones stop after epoch 2, and the champion is the best;
    resume_sweep= of the done sweep leaves the pruned jobs as they are."""
    lrs = "optimizer.lr=1e-3,2e-3,3e-3,1e-6,2e-6"
    command = processes.train_command(
        tiny_root,
        store_uri,
        lrs,
        "trainer.epochs=3",
        "objective.pruner=median",
        "tracking.register_as=tiny",
        multirun=True,
    )
    started = time.time()
    out = processes.run(command, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = runs_in(store_uri)
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    jobs = {r.info.run_name: r for r in found if r is not parent}
    assert {name: r.info.status for name, r in jobs.items()} == {
        "lr=0.001": "FINISHED",
        "lr=0.002": "FINISHED",
        "lr=0.003": "FINISHED",
        "lr=1e-06": "KILLED",
        "lr=2e-06": "KILLED",
    }
    for name in ("lr=1e-06", "lr=2e-06"):
        pruned = jobs[name]
        assert pruned.data.tags["pruned_at_epoch"] == "2" and "test_acc" not in pruned.data.metrics
        assert "interrupted" not in pruned.data.tags  # pruned is not stopped by a signal: nothing to resume
        client = MlflowClient(store_uri)
        assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_acc")] == [1, 2]
        assert "checkpoints/last.pt" in {a.path for a in client.list_artifacts(pruned.info.run_id, "checkpoints")}
    metrics = parent.data.metrics
    assert (metrics["n_jobs"], metrics["n_finished"], metrics["n_pruned"], metrics["n_failed"]) == (5, 3, 2, 0)

    top = max(r.data.metrics["val_acc"] for r in jobs.values() if r.info.status == "FINISHED")
    best = parent.data.tags["best_run_id"]
    assert best in {
        r.info.run_id for r in jobs.values() if r.info.status == "FINISHED" and r.data.metrics["val_acc"] == top
    }
    champion = client.get_model_version_by_alias("tiny", "champion")
    assert champion.run_id == best and parent.data.tags["champion"] == f"models:/tiny/{champion.version}"
    assert len(client.search_model_versions("name = 'tiny'")) == 1  # only the champion is registered

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/summary.csv", "sweep/parallel_coordinates.png", "sweep/pareto.png"}
    summary = client.download_artifacts(parent.info.run_id, "sweep/summary.csv", str(tmp_path))
    import pandas as pd

    table = pd.read_csv(summary)
    assert sorted(table["optimizer.lr"]) == [1e-6, 2e-6, 1e-3, 2e-3, 3e-3]
    assert table["pruned_at_epoch"].notna().sum() == 2
    print(f"pruned grid took {time.time() - started:.0f} s")

    again = processes.run(
        [*processes.TRAIN, "-m", f"resume_sweep={parent.info.run_id}", f"tracking.uri={store_uri}"], tmp_path
    )  # every job is done: the pruned ones stay pruned, untouched, and nothing is recorded twice
    assert again.returncode == 0, again.stderr[-3000:]
    after = {r.info.run_name: r for r in runs_in(store_uri) if r.info.run_id != parent.info.run_id}
    assert sorted(after) == sorted(jobs)
    for name in ("lr=1e-06", "lr=2e-06"):
        assert (after[name].info.end_time, after[name].data.tags, after[name].data.metrics) == (
            jobs[name].info.end_time,
            jobs[name].data.tags,
            jobs[name].data.metrics,
        )
    assert len(client.search_model_versions("name = 'tiny'")) == 1


@pytest.mark.slow
def test_an_optuna_searchs_jobs_report_to_their_trials_and_its_study_prunes_them(tiny_root, store_uri, tmp_path):
    """The grid above as an Optuna search: each job reports its epochs to its own trial and the
    study's pruner judges it, so every hopeless learning rate tried after a good one finished is
    pruned: its trial PRUNED with the epochs the run logged, its run KILLED with pruned_at_epoch."""
    parent, runs, study, printed = search(
        tiny_root,
        store_uri,
        tmp_path,
        "hparams_search=lr_batch",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=5",
        "optimizer.lr=choice(1e-3,2e-3,3e-3,1e-6,2e-6)",
        "model.layers.0.out_channels=16",
        "trainer.epochs=3",
        "objective.pruner=median",
        "objective.prune_min_runs=1",
        "tracking.log_model=false",
    )
    assert "pruning in study" in printed and "pruning from MLflow" not in printed
    client, finished_before = MlflowClient(store_uri), False
    for trial in sorted(study.trials, key=lambda t: t.number):
        run = runs[trial.user_attrs["mlflow_run"]]
        hopeless = trial.params["optimizer.lr"] < 1e-5
        expected = "PRUNED" if hopeless and finished_before else "COMPLETE"
        assert trial.state.name == expected, (trial.number, trial.params)
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
        assert trial.intermediate_values == {step: history[step] for step in (1, 2)}  # the last epoch is not judged
        if expected == "PRUNED":
            assert run.info.status == "KILLED" and run.data.tags["pruned_at_epoch"] == "2"
        else:
            assert run.info.status == "FINISHED" and trial.values == [run.data.metrics["val_acc"]]
        finished_before |= not hopeless
    assert parent.data.metrics["n_pruned"] == sum(t.state.name == "PRUNED" for t in study.trials) >= 1
