"""trainer.keep_best: the K best epochs kept as logged models, linked to their metrics, the rest
deleted with their files; tracking.register_from=best registers the best of them."""

from mlflow import MlflowClient

from mnist_cnn.runner import train
from mnist_cnn.tracking.registry import epoch_models
from tests.helpers.mlflow_store import only_run


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
    final = client.get_logged_model(run.data.tags["model_uri"].removeprefix("models:/"))
    assert final.artifact_location != version.source  # the final epoch's model is logged as well, not registered


def test_without_keep_best_only_the_final_model_is_logged_and_registered(tiny_cfg, store_uri, tmp_path):
    train.run(tiny_cfg("trainer.epochs=2", "tracking.register_as=tiny"), tmp_path / "out")
    run, client = only_run(store_uri), MlflowClient(store_uri)
    assert [m.name for m in client.search_logged_models([run.info.experiment_id])] == ["model"]
    final = client.get_logged_model(run.data.tags["model_uri"].removeprefix("models:/"))
    assert client.get_model_version("tiny", "1").source == final.artifact_location
