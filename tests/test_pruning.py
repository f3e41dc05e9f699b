"""Pruning a sweep's hopeless jobs with Optuna's pruners, judged on the siblings' MLflow histories;
the champion and the report of a pruned sweep."""

import time
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mnist_cnn.runner import train
from mnist_cnn.sweep.prune import SweepPruner
from tests.helpers import processes
from tests.helpers.mlflow_store import only_run
from tests.helpers.mlflow_store import runs as runs_in

GOOD = ([0.50, 0.80, 0.90], [0.60, 0.85, 0.92], [0.55, 0.82, 0.91])  # three finished siblings' val_acc


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
    history = [{"val_acc": v} for v in own]
    return SweepPruner(cfg, parent).should_prune(client, judged, history)


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_a_job_far_behind_its_finished_siblings_is_pruned_and_a_good_one_is_not(tiny_cfg, store_uri, pruner):
    assert judge(tiny_cfg, store_uri, [0.10, 0.12], *GOOD, pruner=pruner)
    assert not judge(tiny_cfg, store_uri, [0.60, 0.90], *GOOD, pruner=pruner)


def test_median_pruning_waits_for_the_warmup_epochs_and_enough_finished_siblings(tiny_cfg, store_uri):
    assert not judge(tiny_cfg, store_uri, [0.10], *GOOD, pruner="median")  # epoch 1 is warmup
    assert judge(tiny_cfg, store_uri, [0.10], *GOOD, pruner="median", prune_warmup_epochs=0)
    assert not judge(tiny_cfg, store_uri, [0.10, 0.12], *GOOD[:2], pruner="median")  # 2 finished < prune_min_runs 3
    assert judge(tiny_cfg, store_uri, [0.10, 0.12], *GOOD[:2], pruner="median", prune_min_runs=2)
    # a failed or stopped sibling is no yardstick: only the finished ones count
    assert not judge(tiny_cfg, store_uri, [0.10, 0.12], *GOOD, statuses={0: "FAILED"}, pruner="median")


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
        "trainer.epochs=3", "objective.pruner=median", "objective.metric=val_loss", "objective.direction=minimize"
    )
    assert SweepPruner(cfg, parent).should_prune(client, judged, [{"val_loss": 2.3}, {"val_loss": 2.3}])
    assert not SweepPruner(cfg, parent).should_prune(client, judged, [{"val_loss": 0.7}, {"val_loss": 0.3}])


def test_a_pruned_job_ends_killed_and_gives_the_sweeper_its_last_value(tiny_cfg, store_uri, tmp_path, monkeypatch):
    """A pruner that prunes after epoch 1: the run ends KILLED with `pruned_at_epoch`, and `run` returns
    that epoch's metrics (mnist-cnn-train hands their objective.metric to the sweeper)."""

    class Prunes:
        def should_prune(self, client, run_id, history):
            return True

    monkeypatch.setattr(train, "sweep_pruner", lambda cfg: Prunes())
    last = train.run(tiny_cfg("trainer.epochs=3", "tracking.log_model=false"), tmp_path / "out")
    run = only_run(store_uri)
    assert run.info.status == "KILLED" and run.data.tags["pruned_at_epoch"] == "1"
    assert last["val_acc"] == run.data.metrics["val_acc"] and "test_acc" not in last


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
