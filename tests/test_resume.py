"""Bit-for-bit reproducibility: same seed, same weights; a run killed mid-epoch resumes exactly."""

import os
import signal
import subprocess
import sys

import mlflow
import pytest
from mlflow import MlflowClient

from mnist_cnn import train
from mnist_cnn.errors import CheckpointError, ConfigError
from tests.conftest import write_tiny_mnist

HISTORY = ("train_loss", "train_acc", "val_loss", "val_acc")


def history(run_id):
    client = MlflowClient()
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in HISTORY}


def runs_by_name(folder):
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    return {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["mnist"], output_format="list")}


def test_same_seed_gives_the_same_weights_and_metrics_and_another_seed_does_not(tiny_cfg, tmp_path):
    """bn_cnn has dropout and batchnorm, so weight init, shuffling and dropout all have to repeat."""
    common = ("model=bn_cnn", "trainer.epochs=2", "tracking.log_model=false")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train.run(tiny_cfg(*common, f"seed={seed}", f"tracking.run_name={name}"), tmp_path / name)
    runs = runs_by_name(tmp_path)
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert a.data.tags["weights_sha256"] == b.data.tags["weights_sha256"]
    assert history(a.info.run_id) == history(b.info.run_id)
    assert a.data.tags["weights_sha256"] != c.data.tags["weights_sha256"]
    assert history(a.info.run_id)["train_loss"] != history(c.info.run_id)["train_loss"]
    for tag in ("seed", "data_sha256", "config_sha256", "git_commit", "git_dirty", "version.torch", "deterministic"):
        assert tag in a.data.tags, tag
    assert a.data.tags["config_sha256"] == b.data.tags["config_sha256"] != c.data.tags["config_sha256"]
    assert a.data.tags["data_sha256"] == c.data.tags["data_sha256"]


def command(folder, root, *overrides):
    return [
        sys.executable, "-m", "mnist_cnn.train", f"data.root={root}", "data.verify_checksums=false",
        "data.val_size=200", "data.batch_size=50", "trainer.epochs=3", "seed=3", "model=bn_cnn",
        f"tracking.uri=sqlite:///{folder}/mlflow.db", "tracking.log_model=false", *overrides,
    ]


def test_a_run_killed_in_epoch_2_resumes_to_the_uninterrupted_result(tmp_path):
    root = write_tiny_mnist(tmp_path / "data", n_train=1200, n_test=200)
    full = subprocess.run(command(tmp_path, root, "tracking.run_name=full"), capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cut = subprocess.Popen(command(tmp_path, root, "tracking.run_name=cut"), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    for line in cut.stdout:
        if "epoch 1/3" in line:  # epoch 2 has begun: stop it half-way
            cut.send_signal(signal.SIGTERM)
            break
    output = line + cut.communicate(timeout=60)[0]
    assert cut.returncode != 0
    killed = runs_by_name(tmp_path)["cut"]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["resume_command"].startswith(f"mnist-cnn-train resume={killed.info.run_id}")
    assert [step for step, _ in history(killed.info.run_id)["val_acc"]] == [1], output[-2000:]  # epoch 2 left no trace

    resumed = subprocess.run(command(tmp_path, root, f"resume={killed.info.run_id}"), capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = runs_by_name(tmp_path)
    assert set(runs) == {"full", "cut"}  # the same run continued, no new one
    assert runs["cut"].info.status == "FINISHED" and runs["cut"].data.tags["resumed_at_epoch"] == "2"
    assert runs["cut"].data.tags["weights_sha256"] == runs["full"].data.tags["weights_sha256"]
    assert history(runs["cut"].info.run_id) == history(runs["full"].info.run_id)
    assert runs["cut"].data.metrics["test_acc"] == runs["full"].data.metrics["test_acc"]

    refused = subprocess.run(command(tmp_path, root, f"resume={killed.info.run_id}", "optimizer.lr=0.5"), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert refused.returncode == 2
    assert "the run already FINISHED; there is nothing to resume" in refused.stdout + refused.stderr


def test_resume_refuses_overrides_that_change_the_result(tiny_cfg, tmp_path, monkeypatch):
    real_epoch = train.train_epoch

    def interrupted_in_epoch_2(*args, **kwargs):
        if args[-1] == 2:  # the epoch number
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", interrupted_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg("trainer.epochs=2", "tracking.log_model=false"), tmp_path / "out")
    (killed,) = runs_by_name(tmp_path).values()
    assert killed.info.status == "KILLED"

    from mnist_cnn import tracking

    resume = f"resume={killed.info.run_id}"
    monkeypatch.setattr(tracking, "job_overrides", lambda: [resume, "optimizer.lr=0.5", "data.root=/elsewhere"])
    with pytest.raises(ConfigError, match=r"optimizer.lr=0.5 would change the result of the run being resumed"):
        tracking.resume_point(tiny_cfg(resume, "optimizer.lr=0.5"))
    monkeypatch.setattr(tracking, "job_overrides", lambda: [resume, "optimizer.lr=0.001", "trainer.progress=false"])
    run_cfg, checkpoint = tracking.resume_point(tiny_cfg(resume, "optimizer.lr=0.001"))  # same value: allowed
    assert checkpoint["epoch"] == 1 and run_cfg.trainer.epochs == 2 and run_cfg.resume == killed.info.run_id


def test_resume_of_an_unknown_run_says_so(tiny_cfg):
    from mnist_cnn import tracking

    with pytest.raises(CheckpointError, match="resume=0123456789abcdef: no such run"):
        tracking.resume_point(tiny_cfg("resume=0123456789abcdef"))
