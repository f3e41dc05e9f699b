"""Fetch the missing files of a dataset from torchvision's mirrors, checked against its MD5 sums.

Only the files asked for are fetched, each into a temporary folder first and then moved into place,
so a failed or interrupted download never leaves a partial file. A lock next to the files keeps
parallel sweep jobs from fetching the same file twice, and a socket timeout makes a machine without
internet fail within seconds instead of hanging.
"""

import os
import socket
import tempfile
from pathlib import Path
from typing import List

from filelock import FileLock

from mnist_cnn.data.datasets import ALL_FILES, DatasetInfo
from mnist_cnn.errors import DataError

TIMEOUT_S = 10.0


def fetch(info: DatasetInfo, raw: Path, bases: List[str]) -> None:
    """Download `bases` (file names without .gz) of dataset `info` into `raw` as .gz files."""
    from torchvision import datasets  # seconds to import, and only a download needs it
    from torchvision.datasets.utils import download_url  # see above

    source = getattr(datasets, info.folder)  # MNIST, FashionMNIST, KMNIST: their mirrors and MD5 sums
    md5 = dict(source.resources)
    raw.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)
    try:
        with FileLock(str(raw / ".download.lock")), tempfile.TemporaryDirectory(dir=raw) as tmp:
            for base in bases:
                filename = f"{base}.gz"
                if (raw / filename).is_file():  # another job fetched it while we waited for the lock
                    continue
                errors = []
                for mirror in source.mirrors:
                    try:
                        download_url(mirror + filename, tmp, filename, md5[filename])
                        break
                    except Exception as e:  # URLError, OSError, RuntimeError("File not found or corrupted.")
                        errors.append(f"{mirror}: {type(e).__name__}: {e}")
                else:
                    raise DataError(
                        f"could not download {filename} into {raw} ({'; '.join(errors)}). Copy the four files "
                        f"{ALL_FILES} there by hand, or point data.root (or MNIST_CNN_DATA_DIR) at a folder "
                        f"that holds {info.folder}/raw."
                    )
                os.replace(Path(tmp) / filename, raw / filename)
    finally:
        socket.setdefaulttimeout(previous)
