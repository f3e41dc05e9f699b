"""The dataset a run trained on, logged as its MLflow input: the UI's Dataset column and lineage.

Logged with the client API (`mlflow.log_input` would start a fluent run). MLflow caps a dataset
digest at 36 characters, so the digest is a prefix of `data_sha256`; the whole hash, the source
folder and the split sizes are in the dataset's profile.
"""

import json
from typing import Dict

import numpy as np
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from mnist_cnn.data.datasets import SIDE


def dataset_input(name: str, folder: str, sizes: Dict[str, int], sha256: str) -> DatasetInput:
    """`name` read from `folder`, split into `sizes` (train/val/test), with content hash `sha256`."""
    source = get_dataset_source_from_json(json.dumps({"uri": folder}), "local")
    schema = Schema(
        [TensorSpec(np.dtype(np.uint8), (-1, SIDE, SIDE), "image"), TensorSpec(np.dtype(np.int64), (-1,), "label")]
    )
    meta = MetaDataset(source=source, name=name, digest=sha256[:12], schema=schema).to_dict()
    profile = {
        **{f"{split}_size": n for split, n in sizes.items()},
        "num_rows": sum(sizes.values()),
        "data_sha256": sha256,
    }
    dataset = Dataset(
        meta["name"], meta["digest"], meta["source_type"], meta["source"], meta.get("schema"), json.dumps(profile)
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training"), InputTag("data_sha256", sha256)])
