"""Multirun sweeps: one MLflow parent per sweep, every job a child, across processes; the runs table."""

import json
import subprocess
import sys

import mlflow
import pytest

from mnist_cnn import runs
from mnist_cnn.sweep import run_name
from tests.conftest import write_tiny_mnist

TINY = ["data.verify_checksums=false", "data.val_size=100", "trainer.epochs=1", "trainer.limit_batches=3"]


def sweep(folder, *overrides):
    """Run `mnist-cnn-train -m OVERRIDES` on tiny data in `folder`, with a fresh sqlite store there."""
    root = write_tiny_mnist(folder / "data")
    command = [sys.executable, "-m", "mnist_cnn.train", "-m", f"data.root={root}", *TINY, *overrides]
    out = subprocess.run(command, capture_output=True, text=True, cwd=folder, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    all_runs = mlflow.search_runs(experiment_names=["mnist"], output_format="list")
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(all_runs) - 1  # no stray run outside the sweep
    return parents[0], children


def assert_four_good_children(parent, children):
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert {"train_loss", "val_acc", "test_acc", "lr", "epoch_time_s"} <= set(child.data.metrics)
    assert sorted(c.info.run_name for c in children) == ["lr=0.001,seed=1", "lr=0.001,seed=2", "lr=0.003,seed=1", "lr=0.003,seed=2"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_jobs"] == 4 and parent.data.metrics["n_failed"] == 0
    best = max(children, key=lambda c: c.data.metrics["val_acc"])
    assert parent.data.metrics["best_val_acc"] == best.data.metrics["val_acc"]
    assert parent.data.tags["best_run_id"] in {c.info.run_id for c in children if c.data.metrics["val_acc"] == best.data.metrics["val_acc"]}


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("joblib")
    return folder, *sweep(folder, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "optimizer.lr=1e-3,3e-3", "seed=1,2")


def test_parallel_joblib_sweep_is_one_parent_with_four_children(joblib_sweep):
    _, parent, children = joblib_sweep
    assert_four_good_children(parent, children)
    assert parent.data.tags["launcher"] == "JoblibLauncher" and parent.data.tags["sweeper"] == "BasicSweeper"
    assert "optimizer.lr=1e-3,3e-3 seed=1,2" in parent.data.tags["sweep_overrides"]
    assert all("optimizer.lr=" in c.data.tags["hydra_overrides"] for c in children)


def test_submitit_local_sweep_is_one_parent_with_four_children(tmp_path):
    parent, children = sweep(tmp_path, "hydra/launcher=submitit_local", "optimizer.lr=1e-3,3e-3", "seed=1,2")
    assert_four_good_children(parent, children)


def test_optuna_search_survives_failed_trials_and_names_the_best(tmp_path):
    """Width 0 is an impossible config and lr 1e6 diverges: both trials are FAILED runs, the study goes on."""
    parent, children = sweep(
        tmp_path,
        "hparams_search=lr_batch",
        "hydra.sweeper.n_trials=6",
        "optimizer=sgd",
        "optimizer.lr=choice(0.05, 1e6)",
        "model.layers.0.out_channels=choice(0, 8)",
    )
    assert len(children) == 6 and parent.data.metrics["n_jobs"] == 6
    failed = [c for c in children if c.info.status == "FAILED"]
    assert parent.data.metrics["n_failed"] == len(failed) > 0
    assert all("error" in c.data.tags for c in failed)
    good = [c for c in children if c.info.status == "FINISHED"]
    assert good, "with seed 123 the sampler picks at least one workable trial"
    assert parent.data.tags["best_run_id"] == max(good, key=lambda c: c.data.metrics["val_acc"]).info.run_id
    assert parent.data.tags["sweeper"] == "OptunaSweeper"


def test_a_single_run_has_no_parent(tiny_cfg, tmp_path):
    from mnist_cnn import train

    train.run(tiny_cfg("trainer.limit_batches=2"), tmp_path / "out")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = mlflow.search_runs(experiment_names=["mnist"], output_format="list")
    assert "mlflow.parentRunId" not in run.data.tags


def test_runs_table_lists_a_sweep_sorted(joblib_sweep, capsys):
    folder, parent, children = joblib_sweep
    uri = f"sqlite:///{folder}/mlflow.db"
    runs.main(["--tracking-uri", uri, "--sweep", parent.info.run_id, "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    accs = [r["val_acc"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert set(rows[0]) >= {"name", "status", "overrides", "val_acc", "test_acc", "epochs", "wall_s"}

    runs.main(["--tracking-uri", uri, "--sort", "train_loss", "--ascending", "--top", "2", "--format", "csv"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("run_id,name,status,overrides,val_acc,test_acc,epochs,wall_s,train_loss")
    assert len(lines) == 3
    losses = [float(line.rsplit(",", 1)[1]) for line in lines[1:]]
    assert losses == sorted(losses) and losses[0] == min(c.data.metrics["train_loss"] for c in children)

    runs.main(["--tracking-uri", uri])
    table = capsys.readouterr().out
    assert parent.info.run_id in table and "lr=0.003,seed=1" in table


def test_runs_table_rejects_an_unknown_experiment(joblib_sweep):
    folder, _, _ = joblib_sweep
    with pytest.raises(SystemExit, match="no experiment 'nope'"):
        runs.main(["--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--experiment", "nope"])


def test_run_names_come_from_the_overrides_that_matter():
    overrides = ["optimizer.lr=0.003", "data.batch_size=256", "data.root=/x", "tracking.uri=sqlite:///y.db", "model.layers.0.out_channels=16"]
    assert run_name(overrides) == "lr=0.003,bs=256,l0.ch=16"
    assert run_name(overrides, only=["data.batch_size"]) == "bs=256"
    assert run_name(["data.root=/x"]) is None
    assert run_name(["optimizer.lr=0.0024713734184878826", "optimizer=sgd", "seed=1"]) == "lr=0.002471,optimizer=sgd,seed=1"
