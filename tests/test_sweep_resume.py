"""resume_sweep=PARENT_RUN_ID: a stopped sweep finishes in the same parent, doing each job once."""

import json
import shlex

import optuna
import pytest
from mlflow import MlflowClient

from mnist_cnn.errors import CheckpointError, ConfigError, ModelError
from mnist_cnn.names import SWEEP_ARGV
from mnist_cnn.sweep.plots import pareto_front
from mnist_cnn.sweep.relaunch import sweep_arguments
from mnist_cnn.sweep.tables import jobs_table
from mnist_cnn.tracking.heartbeat import alive_tags
from tests.helpers import processes
from tests.helpers.mlflow_store import runs as runs_in
from tests.helpers.searches import children, stop_with_sigterm, study_of

RECORDED = ["hydra/launcher=joblib", "optimizer.lr=1e-3,3e-3", "seed=1,2", "data.root=/data"]


def parent_run(uri: str, status: str = "KILLED", tags: dict = None) -> str:
    client = MlflowClient(uri)
    run_id = client.create_run(
        client.create_experiment("sweeps"), tags={SWEEP_ARGV: json.dumps(RECORDED), **(tags or {})}
    ).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def test_the_recorded_overrides_come_back_and_run_settings_may_change(store_uri):
    parent = parent_run(store_uri)
    argv = sweep_arguments(
        ["train", "-m", f"resume_sweep={parent}", f"tracking.uri={store_uri}", "data.root=/elsewhere"]
    )
    assert argv == [
        "train",
        "-m",
        f"resume_sweep={parent}",
        f"tracking.uri={store_uri}",
        "data.root=/elsewhere",
        *RECORDED[:3],
    ]
    same = ["train", "-m", *RECORDED, f"resume_sweep={parent}", f"tracking.uri={store_uri}"]
    assert sweep_arguments(same) == same  # the same command line again, with resume_sweep added
    assert sweep_arguments(["train", "-m", "seed=1,2"]) == ["train", "-m", "seed=1,2"]


@pytest.mark.parametrize(
    "args, error, message",
    [
        ([], ConfigError, "relaunches a sweep: add -m (--multirun)."),
        (["-m", "seed=1,2,3"], ConfigError, "seed=1,2,3 would change the sweep, which keeps its own overrides"),
        (["-m", "trainer.epochs=9"], ConfigError, "trainer.epochs=9 would change the sweep"),
    ],
)
def test_resume_sweep_refuses_what_would_not_finish_the_same_sweep(store_uri, args, error, message):
    parent = parent_run(store_uri)
    with pytest.raises(error) as e:
        sweep_arguments(["train", *args, f"resume_sweep={parent}", f"tracking.uri={store_uri}"])
    assert message in str(e.value)


def test_resume_sweep_names_a_run_that_is_no_sweep_or_still_running(store_uri):
    client = MlflowClient(store_uri)
    single = client.create_run(client.create_experiment("single")).info.run_id
    cases = [
        ("", ConfigError, "resume_sweep= is empty: give the id of a sweep's parent run"),  # an unset shell variable
        ("0" * 32, ModelError, "no run 00000000000000000000000000000000 in this tracking store"),
        (single, ConfigError, "is not the parent run of a sweep"),
        (
            parent_run(store_uri, "RUNNING", alive_tags(30)),
            CheckpointError,
            "is still running (its heartbeat is fresh); stop that sweep first.",
        ),
    ]
    for run_id, error, message in cases:
        with pytest.raises(error) as e:
            sweep_arguments(["train", "-m", f"resume_sweep={run_id}", f"tracking.uri={store_uri}"])
        assert message in str(e.value)


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_finishes_with_each_job_once(tiny_root, store_uri, tmp_path):
    """4 seeds; SIGTERM once two jobs finished; resume_sweep finishes the rest in the same parent,
    continuing the stopped job's own run and leaving the finished ones untouched."""
    grid = ("seed=1,2,3,4", "trainer.epochs=30", "tracking.log_model=false")  # jobs long enough to stop
    output = stop_with_sigterm(
        processes.train_command(tiny_root, store_uri, *grid, multirun=True), tmp_path, store_uri, 2
    )
    parent, before = children(store_uri)
    finished = {r.info.run_id: r for r in before if r.info.status == "FINISHED"}
    assert parent.info.status == "KILLED" and len(finished) >= 2 and len(before) <= 4, output[-3000:]
    assert any(r.info.status == "KILLED" for r in before) or len(before) < 4, "the signal must stop the sweep midway"

    out = processes.run(
        [*processes.TRAIN, "-m", f"resume_sweep={parent.info.run_id}", f"tracking.uri={store_uri}"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming sweep {parent.info.run_id} with its overrides" in out.stderr
    parent, after = children(store_uri)
    assert sorted(r.data.params["seed"] for r in after) == ["1", "2", "3", "4"]  # each seed once
    assert {r.info.status for r in after} == {"FINISHED"}
    for run_id, run in finished.items():  # untouched: same end, same metrics, same tags
        again = next(r for r in after if r.info.run_id == run_id)
        assert (again.info.end_time, again.data.metrics, again.data.tags) == (
            run.info.end_time,
            run.data.metrics,
            run.data.tags,
        )
    for stopped in (r for r in before if r.info.status == "KILLED"):  # continued in its own run
        resumed = next(r for r in after if r.info.run_id == stopped.info.run_id)
        assert resumed.data.metrics["test_acc"] > 0 and "interrupted" not in resumed.data.tags
    assert (
        parent.info.status == "FINISHED"
        and parent.data.metrics["n_jobs"] == 4
        and parent.data.metrics["n_finished"] == 4
    )
    assert parent.data.metrics["seeds_n"] == 4  # the seeds as one group: mean and std of 4
    seeds = [r.data.metrics["val_acc"] for r in after]
    assert parent.data.metrics["seeds_val_acc_mean"] == pytest.approx(sum(seeds) / 4)


@pytest.mark.slow
def test_a_resumed_optuna_sweep_counts_the_trials_it_already_ran(tiny_root, store_uri, tmp_path):
    search = ("hparams_search=lr_batch", "trainer.limit_batches=3", "tracking.log_model=false")
    first = processes.run(
        processes.train_command(tiny_root, store_uri, *search, "hydra.sweeper.n_trials=2", multirun=True), tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    parent, before = children(store_uri)

    more = [
        *processes.TRAIN,
        "-m",
        f"resume_sweep={parent.info.run_id}",
        f"tracking.uri={store_uri}",
        "hydra.sweeper.n_trials=3",
    ]
    out = processes.run(more, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    parent, after = children(store_uri)
    assert len(after) == 3 and parent.data.metrics["n_jobs"] == 3  # n_trials counts the two done before
    assert {r.info.run_id for r in before} < {r.info.run_id for r in after}
    assert parent.data.tags["sweeper"] == "OptunaSweeper"

    importances = {k: v for k, v in parent.data.metrics.items() if k.startswith("importance_")}  # what mattered
    assert set(importances) == {"importance_optimizer.lr", "importance_model.layers.0.out_channels"}
    assert sum(importances.values()) == pytest.approx(1.0) and all(v >= 0 for v in importances.values())
    assert "sweep/importance.png" in {
        a.path for a in MlflowClient(store_uri).list_artifacts(parent.info.run_id, "sweep")
    }
    printed = out.stdout + out.stderr
    assert "what mattered to val_acc (fANOVA over 3 completed trials; too few to mean much" in printed
    assert "\n  optimizer.lr  " in printed  # a key a line


@pytest.mark.slow
def test_a_resumed_sweep_leaves_a_job_that_failed_on_its_config_alone(tiny_root, store_uri, tmp_path):
    """A job that failed before its run opened (here optimizer.lr=-1) is recorded with its config's
    fingerprint, so resume_sweep= finds it and neither runs it again nor records it twice."""
    grid = ("optimizer.lr=-1,1e-3", "trainer.limit_batches=3", "tracking.log_model=false")
    first = processes.run(processes.train_command(tiny_root, store_uri, *grid, multirun=True), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    parent, before = children(store_uri)
    failed = next(r for r in before if r.info.status == "FAILED")
    assert (
        "optimizer.lr=-1" in shlex.split(failed.data.tags["hydra_overrides"])
        and len(failed.data.tags["config_sha256"]) == 64
    )
    assert "optimizer.lr must be > 0" in failed.data.tags["error"]

    again = [*processes.TRAIN, "-m", f"resume_sweep={parent.info.run_id}", f"tracking.uri={store_uri}"]
    out = processes.run(again, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"run {failed.info.run_id} did this job already (FAILED_ON_CONFIG): not run again" in out.stdout + out.stderr
    parent, after = children(store_uri)
    assert sorted((r.info.run_id, r.info.end_time, r.info.status) for r in after) == sorted(
        (r.info.run_id, r.info.end_time, r.info.status) for r in before
    )  # the same two runs, neither touched
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_failed"] == 1


@pytest.mark.slow
def test_an_optuna_search_stopped_by_sigterm_finishes_its_study_with_each_trial_once(tiny_root, store_uri, tmp_path):
    """6 TPE trials (random start, seeded); SIGTERM once 3 finished; resume_sweep= continues the same
    study in its journal beside the store: 6 trials, one MLflow child each, the stopped one continued
    in its own run, and no trial's values asked twice (the sampler continues its random sequence)."""
    search = ("hparams_search=lr_batch", "hydra.sweeper.n_trials=6", "trainer.epochs=12", "tracking.log_model=false")
    stop_with_sigterm(processes.train_command(tiny_root, store_uri, *search, multirun=True), tmp_path, store_uri, 3)
    parent, before = children(store_uri)
    study = parent.data.tags["optuna_study"]
    assert (
        study == f"sweep-{parent.info.run_id}"
        and parent.data.tags["optuna_storage"] == str(tmp_path) + "/mlflow.db.optuna.journal"
    )

    out = processes.run(
        [*processes.TRAIN, "-m", f"resume_sweep={parent.info.run_id}", f"tracking.uri={store_uri}"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    parent, after = children(store_uri)
    assert parent.data.tags["optuna_study"] == study and parent.data.metrics["n_jobs"] == 6
    assert {r.info.status for r in after} == {"FINISHED"} and {r.info.run_id for r in before} <= {
        r.info.run_id for r in after
    }
    searched = ("optimizer.lr", "data.batch_size", "model.layers.0.out_channels")
    assert len({tuple(r.data.params[k] for k in searched) for r in after}) == 6  # each trial's values once

    counted = [
        t
        for t in study_of(parent, tmp_path).trials
        if not t.user_attrs.get("asked_again") and not t.user_attrs.get("surplus")
    ]
    assert len(counted) == 6 and {t.state for t in counted} == {optuna.trial.TrialState.COMPLETE}


@pytest.mark.slow
def test_a_two_objective_search_stopped_by_sigterm_ends_with_its_pareto_front_and_champion(
    tiny_root, store_uri, tmp_path
):
    """NSGA-II on val_loss and train_time_s (both minimized), 6 trials, stopped by SIGTERM after 3
    and resumed: the same study ends with 6 trials, each with one run (a trial NSGA-II drew again
    with an earlier trial's values shares its run: training it again would give the same result);
    the parent tags each run on the study's Pareto front (the same runs the jobs table's own front
    finds), draws it, logs both objectives' importances, and registers the front's lowest val_loss
    as the champion, naming the rule; the stopped sweep registered none."""
    search = (
        "hparams_search=lr_batch",
        "hydra/sweeper/sampler=nsgaii",
        "hydra.sweeper.sampler.population_size=4",
        "hydra.sweeper.n_trials=6",
        "objective.metrics=[val_loss,train_time_s]",
        "objective.directions=[minimize,minimize]",
        "trainer.epochs=12",
        "tracking.register_as=digits",
    )
    stop_with_sigterm(processes.train_command(tiny_root, store_uri, *search, multirun=True), tmp_path, store_uri, 3)
    parent, _ = children(store_uri)
    assert "champion" not in parent.data.tags  # a stopped sweep crowns no champion: its resumption does
    assert MlflowClient(store_uri).search_model_versions("name = 'digits'") == []
    out = processes.run(
        [*processes.TRAIN, "-m", f"resume_sweep={parent.info.run_id}", f"tracking.uri={store_uri}"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    parent, after = children(store_uri)
    runs = {r.info.run_id: r for r in after}
    trials = [t for t in study_of(parent, tmp_path).trials if not t.user_attrs.get("asked_again")]
    assert len(trials) == 6 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert {t.user_attrs["mlflow_run"] for t in trials} == set(runs)  # every run is a trial's, every trial has one
    first = [t.user_attrs["mlflow_run"] for t in trials if "repeats" not in t.user_attrs]
    assert len(first) == len(set(first))  # a run shared by two trials was trained once, for the first
    assert {r.info.status for r in after} == {"FINISHED"} and parent.data.metrics["n_jobs"] == len(runs)

    front = {k.removeprefix("pareto_front."): v for k, v in parent.data.tags.items() if k.startswith("pareto_front.")}
    objectives = [("val_loss", "minimize"), ("train_time_s", "minimize")]
    table = jobs_table(after, [], ["val_loss", "train_time_s"])
    assert set(front) == set(pareto_front(table, objectives)["run_id"])  # Optuna's front is the jobs' own
    for run_id, values in front.items():
        metrics = runs[run_id].data.metrics
        assert values == f"val_loss={metrics['val_loss']:.6g} train_time_s={metrics['train_time_s']:.6g}"
    best = min(
        front, key=lambda run_id: (runs[run_id].data.metrics["val_loss"], runs[run_id].data.metrics["train_time_s"])
    )
    assert parent.data.tags["best_run_id"] == best
    assert parent.data.tags["champion_rule"] == "the Pareto front's lowest val_loss; ties go to the better train_time_s"
    champion = MlflowClient(store_uri).get_model_version_by_alias("digits", "champion")
    assert champion.run_id == best and parent.data.tags["champion"] == f"models:/digits/{champion.version}"

    assert {k.split("/")[0] for k in parent.data.metrics if k.startswith("importance_")} == {
        "importance_val_loss",
        "importance_train_time_s",
    }
    artifacts = {a.path for a in MlflowClient(store_uri).list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/pareto.png", "sweep/importance.png"} <= artifacts


@pytest.mark.slow
def test_two_sweeps_sharing_a_study_run_its_trials_between_them_exactly(tiny_root, store_uri, tmp_path):
    """Two shells start the same search with hydra.sweeper.study_name=shared on one store: 7 trials
    between them, each a child of its own sweep's parent, none beyond the study's n_trials."""
    search = ("hparams_search=lr_batch", "hydra.sweeper.n_trials=7", "hydra.sweeper.study_name=shared")
    fast = ("trainer.limit_batches=3", "tracking.log_model=false")
    jobs = []
    for seed in (1, 2):  # each shell its own folder and sampler seed
        (tmp_path / f"shell{seed}").mkdir()
        command = processes.train_command(
            tiny_root, store_uri, *search, *fast, f"hydra.sweeper.sampler.seed={seed}", multirun=True
        )
        jobs.append(processes.start(command, tmp_path / f"shell{seed}"))
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    found = runs_in(store_uri)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and {p.data.tags["optuna_study"] for p in parents} == {"shared"}
    assert len(found) - 2 == 7 and sum(p.data.metrics["n_jobs"] for p in parents) == 7
