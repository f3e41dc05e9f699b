"""A model that reads digits, trained briefly on the real MNIST, and how alike two digit images are."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from mnist_cnn.runner import train
from tests.helpers.config import make_cfg
from tests.helpers.mlflow_store import copy_store, only_run


def similarity(original: np.ndarray, prepared: np.ndarray) -> float:
    """Correlation of two 28x28 images, allowing one pixel of placement (a rounding of the centre)."""
    shifts = [np.roll(prepared, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return max(float(np.corrcoef(original.ravel(), shifted.ravel())[0, 1]) for shifted in shifts)


def train_and_register(root: Path, store_template: Path, folder: Path) -> dict:
    """One epoch of 300 steps (10-20 s on 2 cores), in a copy of the migrated store in `folder`,
    registered as digits@champion: its store URI, run id and a client of that store."""
    uri = copy_store(store_template, folder)
    cfg = make_cfg(
        [
            f"data.root={root}",
            "trainer.epochs=1",
            "trainer.limit_batches=300",
            "data.batch_size=128",
            "data.val_size=0",
            "objective.metrics=[test_acc]",
            "scheduler=onecycle",  # 98.8% after 300 steps (a constant 3e-3: 98.2%): the first 20 all right
            "optimizer.lr=1e-2",
            "trainer.progress=false",
            f"tracking.uri={uri}",
            "tracking.log_model=true",
        ]
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow puts artifacts under ./mlruns
        final = train.run(cfg, folder / "out").metrics
    assert final["test_acc"] > 0.98, "the model itself must be good enough for 20 of 20"
    run_id = only_run(uri).info.run_id
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # register_model reads the global URI: set only for it, as tests share the process
    try:
        version = mlflow.register_model(f"runs:/{run_id}/model", "digits")
    finally:
        mlflow.set_tracking_uri(before)
    client = MlflowClient(uri)
    client.set_registered_model_alias("digits", "champion", version.version)
    return {"uri": uri, "run_id": run_id, "client": client}
