"""Tiny MNIST-format IDX files written on the fly, and where the real MNIST is."""

import gzip
from pathlib import Path

import numpy as np

from mnist_cnn.config.paths import default_data_root
from mnist_cnn.data.datasets import FILES, IMAGE_MAGIC, LABEL_MAGIC

# The real MNIST where data.root's default finds it: $MNIST_CNN_DATA_DIR, else ./data (resolved now, before any
# test changes folder).
REAL_DATA = Path(default_data_root()).resolve()


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
    """ROOT/MNIST/raw with the four files, as torchvision lays them out; returns ROOT."""
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
