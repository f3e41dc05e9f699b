"""What each MNIST-format dataset is: folder, files, classes, normalisation constants, checksums.

Plain data, no torch, so configs can be checked before the heavy imports (see config.checks).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from mnist_cnn.errors import DataError

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = ", ".join(f"{base}.gz" for pair in FILES.values() for base in pair)
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim
SIDE = 28
IMAGE_SHAPE = (1, SIDE, SIDE)  # one sample as the model sees it: channels, height, width

# SHA-256 of the decompressed files of the published MNIST set (the four files torchvision fetches).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What differs between the MNIST-format datasets; `folder` is also torchvision's class name."""

    folder: str
    classes: Tuple[str, ...]
    mean: float  # of the training pixels scaled to [0, 1]
    std: float
    sha256: Optional[Dict[str, str]] = None  # known digests of the decompressed files


DATASETS = {
    "mnist": DatasetInfo("MNIST", tuple("0123456789"), 0.1307, 0.3081, MNIST_SHA256),
    "fashion_mnist": DatasetInfo(
        "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        0.2860,
        0.3530,
    ),
    "kmnist": DatasetInfo("KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), 0.1918, 0.3483),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"data.name: unknown dataset {name!r}; use one of {', '.join(DATASETS)}.")
    return DATASETS[name]
