"""MNIST-format data: read and check the IDX files, keep each split in memory, serve seeded batches.

Files live where torchvision puts them, `ROOT/<Folder>/raw/<name>[.gz]`. torchvision's own reader
(`read_sn3_pascalvincent_tensor`) only takes plain files and stops on a bare `assert`, so the small
IDX parser here checks each header itself and says which file is wrong and how. Batches are drawn
from the in-memory tensors with a seeded permutation: no per-sample PIL conversion, no workers.
"""

import gzip
import hashlib
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch

from mnist_cnn.datasets import FILES, IMAGE_MAGIC, LABEL_MAGIC, SIDE, DatasetInfo, dataset_info
from mnist_cnn.errors import DataError


@dataclass
class Split:
    """One split held in memory: uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    sha256: str = ""  # of the decompressed image and label files, as read

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])


def load_split(root: str, name: str, split: str, download: bool = False, verify: bool = True) -> Split:
    """Read and check one split ("train" or "test") of dataset `name` under `root`."""
    info = dataset_info(name)
    raw = Path(root).expanduser() / info.folder / "raw"
    paths = [_find(raw, base) for base in FILES[split]]
    if None in paths and download:
        _download(info, raw)
        paths = [_find(raw, base) for base in FILES[split]]
    if None in paths:
        expected = ", ".join(f"{base}.gz" for pair in FILES.values() for base in pair)
        raise DataError(
            f"{name} data not found in {raw}: it needs the four IDX files {expected} (plain or .gz). "
            f"Copy them there, point data.root (or MNIST_CNN_DATA_DIR) at the folder that holds "
            f"{info.folder}/raw, or set data.download=true on a machine with internet access."
        )
    images, images_sha = _read_idx(paths[0], IMAGE_MAGIC, info if verify else None)
    labels, labels_sha = _read_idx(paths[1], LABEL_MAGIC, info if verify else None)
    labels = labels.long()
    if len(images) != len(labels):
        raise DataError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels.")
    bad = labels >= len(info.classes)
    if bad.any():
        raise DataError(
            f"{paths[1]}: label {int(labels[bad][0])} is out of range for {name} "
            f"({len(info.classes)} classes); the file is corrupt or belongs to another dataset."
        )
    return Split(images, labels, hashlib.sha256((images_sha + labels_sha).encode()).hexdigest())


def _find(raw: Path, base: str) -> Optional[Path]:
    for candidate in (raw / base, raw / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int, info: Optional[DatasetInfo]) -> Tuple[torch.Tensor, str]:
    """Parse an IDX file of unsigned bytes, 28x28 images (3 dims) or labels (1 dim); also its SHA-256."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot be read ({e}); replace it with a fresh copy.") from e
    fix = "the file is corrupt or not an MNIST-format IDX file; replace it with a fresh copy"
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found != magic:
        shown = "missing" if found is None else f"0x{found:08x}"
        raise DataError(f"{path}: IDX magic number is {shown}, expected 0x{magic:08x}; {fix}.")
    ndim = magic & 0xFF
    header = 4 * (ndim + 1)
    dims = [int.from_bytes(data[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [SIDE, SIDE]:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {SIDE}x{SIDE}; {fix}.")
    expected = header + int(torch.Size(dims).numel())
    if len(data) != expected:
        raise DataError(f"{path}: header promises {dims[0]} items ({expected} bytes) but the file has {len(data)} bytes; {fix}.")
    base = path.name.removesuffix(".gz")
    digest = hashlib.sha256(data).hexdigest()
    if info is not None and info.sha256 and info.sha256.get(base) != digest:
        raise DataError(
            f"{path}: SHA-256 of its decompressed contents does not match the published {info.folder} file; "
            f"{fix} (or set data.verify_checksums=false for a deliberately modified copy)."
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*dims), digest


def _download(info: DatasetInfo, raw: Path, timeout_s: float = 10.0) -> None:
    """Fetch the files with torchvision into a temporary folder, then move the .gz files into `raw`.

    Nothing partial is left behind when the download fails, and a socket timeout makes an offline
    machine fail within seconds instead of hanging.
    """
    from torchvision import datasets  # imported only here: it takes seconds

    raw.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        with tempfile.TemporaryDirectory(dir=raw.parent) as tmp:
            try:
                getattr(datasets, info.folder)(tmp, train=True, download=True)
            except Exception as e:  # torchvision raises RuntimeError/URLError/OSError; all mean "no files"
                raise DataError(
                    f"could not download {info.folder} into {raw} ({type(e).__name__}: {e}). Copy the four "
                    f"files {', '.join(f'{b}.gz' for pair in FILES.values() for b in pair)} there by hand."
                ) from e
            for gz in (Path(tmp) / info.folder / "raw").glob("*.gz"):
                shutil.move(str(gz), raw / gz.name)
    finally:
        socket.setdefaulttimeout(previous)


def split_validation(train: Split, val_size: int, seed: int) -> Tuple[Split, Optional[Split]]:
    """Hold out `val_size` training images, chosen by a permutation seeded with `seed`."""
    if val_size == 0:
        return train, None
    if not 0 < val_size < len(train):
        raise DataError(f"data.val_size must be between 0 and {len(train) - 1} (the training set size), got {val_size}.")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size])


def batches(
    split: Split,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
    limit: Optional[int] = None,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images as float in [0, 1] with shape (B, 1, 28, 28), labels); shuffled when given a generator."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    order = order.to(split.images.device)
    stop = n - n % batch_size if drop_last else n
    for count, start in enumerate(range(0, stop, batch_size)):
        if limit is not None and count >= limit:
            return
        index = order[start : start + batch_size]
        yield split.images[index].unsqueeze(1).float().div_(255), split.labels[index]


def num_batches(n: int, batch_size: int, drop_last: bool, limit: Optional[int]) -> int:
    full = n // batch_size if drop_last else -(-n // batch_size)
    return full if limit is None else min(full, limit)
