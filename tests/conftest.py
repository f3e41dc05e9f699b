"""Shared fixtures: tiny MNIST-format IDX files written on the fly, and Hydra config composition."""

import gzip
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mnist_cnn.cli import CONF_DIR
from mnist_cnn.data import FILES, IMAGE_MAGIC, LABEL_MAGIC

REAL_DATA = Path(os.environ.get("MNIST_CNN_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Serialise a uint8 array in the IDX format: magic, one big-endian int32 per dimension, data."""
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int) -> tuple:
    """Images whose class is the position of a bright 7x7 square, plus noise: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for image, label in zip(images, labels):
        row, col = 3 + 11 * (label // 5), 1 + 5 * (label % 5)
        image[row : row + 7, col : col + 7] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_tiny_mnist(root: Path, n_train: int = 600, n_test: int = 200, gz: bool = True) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_split(n, seed)
        for base, array, magic in zip(FILES[split], (images, labels), (IMAGE_MAGIC, LABEL_MAGIC)):
            payload = idx_bytes(array, magic)
            if gz:
                (raw / f"{base}.gz").write_bytes(gzip.compress(payload))
            else:
                (raw / base).write_bytes(payload)
    return root


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    return write_tiny_mnist(tmp_path / "data")


def make_cfg(overrides: Optional[List[str]] = None):
    """Compose the real config tree, as `mnist-cnn-train OVERRIDES` would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides or [])


@pytest.fixture
def tiny_cfg(tiny_root: Path, tmp_path: Path, monkeypatch):
    """A config factory for fast runs on the tiny data, tracked in a fresh sqlite store in tmp_path."""
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns

    def factory(*overrides: str):
        return make_cfg(
            [
                f"data.root={tiny_root}",
                "data.verify_checksums=false",
                "data.val_size=100",
                "data.batch_size=50",
                "trainer.epochs=1",
                "trainer.progress=false",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                *overrides,
            ]
        )

    return factory


@pytest.fixture
def real_root() -> Path:
    """The real MNIST (MNIST_CNN_DATA_DIR, else ../shared/data): skipped where absent, required in CI."""
    if not (REAL_DATA / "MNIST" / "raw").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the real MNIST at {REAL_DATA}/MNIST/raw (set MNIST_CNN_DATA_DIR).")
        pytest.skip(f"no real MNIST at {REAL_DATA}")
    return REAL_DATA
