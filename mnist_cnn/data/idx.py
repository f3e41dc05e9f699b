"""Read and check the IDX files of one split, fetching missing ones first when allowed.

Files live where torchvision puts them, `ROOT/<Folder>/raw/<name>[.gz]`. torchvision's own reader
(`read_sn3_pascalvincent_tensor`) only takes plain files and stops on a bare `assert`, so the small
parser here checks each header itself and says which file is wrong and how.
"""

import gzip
import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from mnist_cnn.data.datasets import ALL_FILES, FILES, IMAGE_MAGIC, LABEL_MAGIC, SIDE, DatasetInfo, dataset_info
from mnist_cnn.data.download import fetch
from mnist_cnn.data.splits import Split
from mnist_cnn.errors import DataError


def load_split(root: str, name: str, split: str, download: str = "never", verify: bool = True) -> Split:
    """Read and check one split ("train" or "test") of dataset `name` under `root`.

    `download="auto"` first fetches the files of this split that are missing (see data.download).
    """
    info = dataset_info(name)
    raw = Path(root).expanduser() / info.folder / "raw"
    missing = [base for base in FILES[split] if _find(raw, base) is None]
    if missing and download == "auto":
        fetch(info, raw, missing)
        missing = [base for base in FILES[split] if _find(raw, base) is None]
    if missing:
        raise DataError(_missing_message(name, info, raw, missing))
    paths = [_find(raw, base) for base in FILES[split]]
    images, images_sha = _read_cached(paths[0], IMAGE_MAGIC, info if verify else None)
    labels, labels_sha = _read_cached(paths[1], LABEL_MAGIC, info if verify else None)
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
    """The plain or gzipped file `base` in `raw`; a folder in its place is an error naming it."""
    for candidate in (raw / base, raw / f"{base}.gz"):
        if candidate.is_dir():
            raise DataError(f"{candidate} is a folder, not a file; replace it with the IDX file {base}.gz.")
        if candidate.is_file():
            return candidate
    return None


def _missing_message(name: str, info: DatasetInfo, raw: Path, missing: List[str]) -> str:
    what = f"{raw} does not exist" if not raw.is_dir() else f"{raw} lacks {', '.join(f'{m}(.gz)' for m in missing)}"
    return (
        f"{name} data not found: {what}. It needs the four IDX files {ALL_FILES} (plain or .gz). Copy them "
        f"there, point data.root (or MNIST_CNN_DATA_DIR) at the folder that holds {info.folder}/raw, or let "
        "data.download=auto fetch them on a machine with internet access."
    )


_READ: Dict[tuple, Tuple[torch.Tensor, str]] = {}


def _read_cached(path: Path, magic: int, info: Optional[DatasetInfo]) -> Tuple[torch.Tensor, str]:
    """`_read_idx`, once per process for a file unchanged since (same size and modification time): the
    jobs of a sweep share the decompressed, checked tensors (never written to) instead of each
    decompressing and checking the same 55 MB again."""
    stat = path.stat()
    key = (path.resolve(), stat.st_size, stat.st_mtime_ns, magic, info is not None)
    if key not in _READ:
        _READ[key] = _read_idx(path, magic, info)
    return _READ[key]


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
        raise DataError(
            f"{path}: header promises {dims[0]} items ({expected} bytes) but the file has {len(data)} bytes; {fix}."
        )
    digest = hashlib.sha256(data).hexdigest()
    if info is not None and info.sha256 and info.sha256.get(path.name.removesuffix(".gz")) != digest:
        raise DataError(
            f"{path}: SHA-256 of its decompressed contents does not match the published {info.folder} file; "
            f"{fix} (or set data.verify_checksums=false for a deliberately modified copy)."
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*dims), digest
