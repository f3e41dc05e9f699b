"""Reading and checking IDX files, and the seeded in-memory batches."""

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mnist_cnn import data
from mnist_cnn.data import DataError, load_split
from tests.conftest import idx_bytes, write_tiny_mnist

IMAGES = "train-images-idx3-ubyte.gz"
LABELS = "train-labels-idx1-ubyte.gz"


def raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def rewrite(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload))


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzipped_and_plain_idx(tmp_path, gz):
    root = write_tiny_mnist(tmp_path, n_train=30, n_test=20, gz=gz)
    train = load_split(str(root), "mnist", "train", verify=False)
    assert train.images.shape == (30, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.shape == (30,) and train.labels.dtype == torch.int64
    assert len(load_split(str(root), "mnist", "test", verify=False)) == 20


def test_missing_files_name_the_folder_and_all_four_files(tmp_path):
    with pytest.raises(DataError) as e:
        load_split(str(tmp_path), "mnist", "train")
    message = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for pair in data.FILES.values():
        for base in pair:
            assert f"{base}.gz" in message


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: rewrite(raw / IMAGES, idx_bytes(np.zeros((5, 28, 28)), 0x00000802)), "IDX magic number is 0x00000802, expected 0x00000803"),
        (lambda raw: rewrite(raw / IMAGES, idx_bytes(np.zeros((5, 32, 32)), data.IMAGE_MAGIC)), "images are 32x32, expected 28x28"),
        (lambda raw: rewrite(raw / IMAGES, idx_bytes(np.zeros((30, 28, 28)), data.IMAGE_MAGIC)[:-100]), "header promises 30 items"),
        (lambda raw: rewrite(raw / IMAGES, b""), "IDX magic number is missing"),
        (lambda raw: (raw / IMAGES).write_bytes(b"not gzip at all"), "cannot be read"),
        (lambda raw: rewrite(raw / LABELS, idx_bytes(np.full(30, 10), data.LABEL_MAGIC)), "label 10 is out of range for mnist (10 classes)"),
        (lambda raw: rewrite(raw / LABELS, idx_bytes(np.zeros(29), data.LABEL_MAGIC)), "holds 30 images but"),
    ],
    ids=["magic", "size", "truncated", "empty", "not-gzip", "label-range", "count-mismatch"],
)
def test_corrupt_files_are_refused_with_the_file_named(tmp_path, corrupt, message):
    root = write_tiny_mnist(tmp_path, n_train=30, n_test=20)
    corrupt(raw_dir(root))
    with pytest.raises(DataError, match="train-") as e:
        load_split(str(root), "mnist", "train", verify=False)
    assert message in str(e.value)


def test_checksums_refuse_files_that_are_not_the_published_mnist(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=30, n_test=20)
    with pytest.raises(DataError, match="SHA-256 of its decompressed contents does not match"):
        load_split(str(root), "mnist", "train", verify=True)


def test_offline_download_fails_fast_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """torchvision's download raising (as it does offline) becomes a DataError naming the folder."""

    def offline_mnist(root, train, download):  # what torchvision.datasets.MNIST does without internet
        partial = Path(root) / "MNIST" / "raw" / IMAGES
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"half a file")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline_mnist)
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_split(str(tmp_path), "mnist", "train", download=True)
    assert time.perf_counter() - start < 5
    assert f"could not download MNIST into {raw_dir(tmp_path)}" in str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in str(e.value)
    assert list(raw_dir(tmp_path).iterdir()) == []  # no partial file in the data folder


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="data.name: unknown dataset 'cifar'; use one of mnist, fashion_mnist, kmnist"):
        data.dataset_info("cifar")


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=100, n_test=10)
    full = load_split(str(root), "mnist", "train", verify=False)
    train_a, val_a = data.split_validation(full, 20, seed=3)
    train_b, val_b = data.split_validation(full, 20, seed=3)
    _, val_c = data.split_validation(full, 20, seed=4)
    assert len(train_a) == 80 and len(val_a) == 20
    assert torch.equal(val_a.images, val_b.images) and not torch.equal(val_a.images, val_c.images)
    assert data.split_validation(full, 0, seed=3) == (full, None)
    with pytest.raises(DataError, match="data.val_size must be between 0 and 99"):
        data.split_validation(full, 100, seed=3)


def test_batches_cover_the_split_once_in_seeded_order():
    split = data.Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 28, 28).clone(), torch.arange(10))
    seen = [y for _, y in data.batches(split, 4, torch.Generator().manual_seed(0))]
    assert [len(y) for y in seen] == [4, 4, 2]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))
    again = [y for _, y in data.batches(split, 4, torch.Generator().manual_seed(0))]
    assert all(torch.equal(a, b) for a, b in zip(seen, again))
    images, labels = next(data.batches(split, 4))
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.float32
    assert torch.allclose(images[:, 0, 0, 0] * 255, labels.float())  # pixels scaled to [0, 1], paired with labels
    assert [len(y) for _, y in data.batches(split, 4, drop_last=True)] == [4, 4]
    assert [len(y) for _, y in data.batches(split, 4, limit=1)] == [4]
    assert data.num_batches(10, 4, drop_last=False, limit=None) == 3


def test_real_mnist_passes_its_checksums(real_root):
    test = load_split(str(real_root), "mnist", "test", verify=True)
    assert len(test) == 10_000 and test.labels.bincount().tolist()[0] == 980  # 980 zeros in MNIST's test set
