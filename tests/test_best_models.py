"""trainer.keep_best: the K best epochs kept as logged models, linked to their metrics, the rest
deleted with their files; tracking.register_from=best registers the best of them."""

import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image, ImageDraw

from mnist_cnn.cli.common import load_model
from mnist_cnn.data.idx import load_split
from mnist_cnn.engine.loop import evaluate
from mnist_cnn.engine.repro import weights_sha256
from mnist_cnn.runner import train
from mnist_cnn.tracking.registry import epoch_models
from tests.helpers import processes
from tests.helpers.mlflow_store import Server, only_run


def test_the_two_best_epochs_are_kept_and_the_best_one_is_registered(tiny_cfg, store_uri, tmp_path):
    cfg = tiny_cfg(
        "trainer.epochs=4",
        "trainer.keep_best=2",
        "tracking.register_as=tiny",
        "tracking.register_from=best",
        "optimizer.lr=3e-3",
    )
    train.run(cfg, tmp_path / "out")
    run, client = only_run(store_uri), MlflowClient(store_uri)
    val_acc = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_acc")}
    best_two = sorted(val_acc, key=lambda epoch: (-val_acc[epoch], epoch))[:2]

    kept = epoch_models(client, run)
    assert sorted(int(m.tags["epoch"]) for m in kept) == sorted(best_two)
    for model in kept:  # each model carries the metrics of its epoch
        linked = {m.key: m.value for m in model.metrics}
        assert linked["val_acc"] == val_acc[int(model.tags["epoch"])] and "train_loss" in linked
    every = client.search_logged_models([run.info.experiment_id])
    assert sorted(m.name for m in every) == sorted(["model", *(f"epoch_{e}" for e in best_two)])  # the others are gone
    on_disk = list((tmp_path / "mlruns").rglob("MLmodel"))
    assert len(on_disk) == 3, on_disk  # their files too: only the final model's and the two kept ones remain

    assert run.data.tags["best_epoch"] == str(best_two[0])
    version = client.get_model_version("tiny", "1")
    best = next(m for m in kept if m.tags["epoch"] == str(best_two[0]))
    assert run.data.tags["best_model_uri"] == f"models:/{best.model_id}" and version.source == best.artifact_location
    # the version says what it holds: that epoch's weights, and the run's test accuracy only if they were tested
    assert version.tags["weights_sha256"] == best.tags["weights_sha256"]
    tested = best.tags["weights_sha256"] == run.data.tags["weights_sha256"]
    assert version.description.startswith("test_acc " if tested else f"epoch {best_two[0]} of run {run.info.run_id}: ")
    final = client.get_logged_model(run.data.tags["model_uri"].removeprefix("models:/"))
    assert final.artifact_location != version.source  # the final epoch's model is logged as well, not registered


def test_without_keep_best_only_the_final_model_is_logged_and_registered(tiny_cfg, store_uri, tmp_path):
    train.run(tiny_cfg("trainer.epochs=2", "tracking.register_as=tiny"), tmp_path / "out")
    run, client = only_run(store_uri), MlflowClient(store_uri)
    assert [m.name for m in client.search_logged_models([run.info.experiment_id])] == ["model"]
    final = client.get_logged_model(run.data.tags["model_uri"].removeprefix("models:/"))
    assert client.get_model_version("tiny", "1").source == final.artifact_location


@pytest.mark.slow  # trains 4 epochs and scores the registered model
def test_early_stopping_keep_best_and_register_from_best_agree_on_the_best_epoch(
    tiny_cfg, tiny_root, store_uri, tmp_path
):
    """val_loss falls by less than min_delta an epoch from epoch 3 on: by the one rule epoch 2 is the
    best, though epochs 3 and 4 have a lower loss. The kept model, the registered one and the tested
    weights are epoch 2's, and the registered version's tag and description say what it holds."""
    cfg = tiny_cfg(
        "trainer.epochs=10",
        "trainer.early_stopping.patience=2",
        "trainer.early_stopping.min_delta=0.01",
        "objective.metrics=[val_loss]",
        "objective.directions=[minimize]",
        "trainer.keep_best=1",
        "tracking.register_as=tiny",
        "tracking.register_from=best",
    )
    train.run(cfg, tmp_path / "out")
    run, client = only_run(store_uri), MlflowClient(store_uri)
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)]
    assert min(losses) < losses[1]  # a later epoch is lower, by less than min_delta each time
    assert run.data.tags["restored_epoch"] == run.data.tags["best_epoch"] == "2"

    version = client.get_model_version("tiny", "1")
    registered = load_model(client, "models:/tiny/1")
    assert version.tags["weights_sha256"] == weights_sha256(registered.module) == run.data.tags["weights_sha256"]
    test = load_split(str(tiny_root), "mnist", "test", "never", verify=False)
    accuracy = evaluate(registered.module, test, 100)["acc"]
    assert version.description.startswith(f"test_acc {accuracy:.4f}, from run {run.info.run_id}")


@pytest.mark.slow
def test_a_model_is_registered_on_a_server_that_serves_its_artifacts_and_predicts_from_there(tiny_root, tmp_path):
    """`mlflow server --artifacts-destination`: the version's source is an mlflow-artifacts:/ folder,
    which the server accepts only inside the logged model the request names."""
    server = Server(tmp_path / "server").start()
    try:
        trained = processes.run(processes.train_command(tiny_root, server.uri, "tracking.register_as=digits"), tmp_path)
        assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
        version = MlflowClient(server.uri).get_model_version("digits", "1")
        assert version.source.startswith("mlflow-artifacts:/") and version.status == "READY"
        image = tmp_path / "digit.png"
        picture = Image.new("L", (28, 28), "black")
        ImageDraw.Draw(picture).line([(14, 5), (14, 22)], fill="white", width=3)  # a 1
        picture.save(image)
        command = ["mnist-cnn-predict", "--model", "models:/digits/1", "--tracking-uri", server.uri, str(image)]
        predicted = processes.run([str(Path(sys.executable).parent / command[0]), *command[1:]], tmp_path)
        assert predicted.returncode == 0 and predicted.stdout.startswith(str(image)), predicted.stderr[-3000:]
    finally:
        server.stop()
