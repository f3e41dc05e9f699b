"""Reading and checking IDX files, fetching missing ones, and the seeded in-memory batches."""

import functools
import gzip
import hashlib
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from mnist_cnn.data import download
from mnist_cnn.data.datasets import FILES, IMAGE_MAGIC, LABEL_MAGIC, dataset_info
from mnist_cnn.data.idx import load_split
from mnist_cnn.data.splits import Split, batches, num_batches, split_validation
from mnist_cnn.errors import ConfigError, DataError
from tests.helpers.data import idx_bytes, write_tiny_mnist

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


def test_a_missing_folder_names_it_and_all_four_files(tmp_path):
    with pytest.raises(DataError) as e:
        load_split(str(tmp_path), "mnist", "train")
    message = str(e.value)
    assert f"{raw_dir(tmp_path)} does not exist" in message
    for base in (b for pair in FILES.values() for b in pair):
        assert f"{base}.gz" in message


def test_one_missing_file_is_named(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=30, n_test=20)
    (raw_dir(root) / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"MNIST/raw lacks t10k-labels-idx1-ubyte\(\.gz\)\. It needs the four"):
        load_split(str(root), "mnist", "test")


def test_a_folder_in_place_of_a_file_is_named(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=30, n_test=20)
    (raw_dir(root) / IMAGES).unlink()
    (raw_dir(root) / IMAGES).mkdir()
    with pytest.raises(
        DataError, match=f"{raw_dir(root) / IMAGES} is a folder, not a file; replace it with the IDX file"
    ):
        load_split(str(root), "mnist", "train")


NOT_IDX = "; the file is corrupt or not an MNIST-format IDX file; replace it with a fresh copy."


@pytest.mark.parametrize(
    "corrupt, first, last",
    [
        (
            lambda raw: rewrite(raw / IMAGES, idx_bytes(np.zeros((5, 28, 28)), 0x00000802)),
            f"{IMAGES}: IDX magic number is 0x00000802, expected 0x00000803",
            NOT_IDX,
        ),
        (
            lambda raw: rewrite(raw / IMAGES, idx_bytes(np.zeros((5, 32, 32)), IMAGE_MAGIC)),
            f"{IMAGES}: images are 32x32, expected 28x28",
            NOT_IDX,
        ),
        (
            lambda raw: rewrite(raw / IMAGES, idx_bytes(np.zeros((30, 28, 28)), IMAGE_MAGIC)[:-100]),
            f"{IMAGES}: header promises 30 items (",
            NOT_IDX,
        ),
        (lambda raw: rewrite(raw / IMAGES, b""), f"{IMAGES}: IDX magic number is missing", NOT_IDX),
        (
            lambda raw: (raw / IMAGES).write_bytes(b"not gzip at all"),
            f"{IMAGES}: cannot be read (",
            "); replace it with a fresh copy.",
        ),
        (
            lambda raw: rewrite(raw / LABELS, idx_bytes(np.full(30, 10), LABEL_MAGIC)),
            f"{LABELS}: label 10 is out of range for mnist (10 classes)",
            "; the file is corrupt or belongs to another dataset.",
        ),
        (
            lambda raw: rewrite(raw / LABELS, idx_bytes(np.zeros(29), LABEL_MAGIC)),
            f"{IMAGES} holds 30 images but {LABELS} holds 29 labels.",
            "",
        ),
    ],
    ids=["magic", "size", "truncated", "empty", "not-gzip", "label-range", "count-mismatch"],
)
def test_corrupt_files_are_refused_with_the_file_named(tmp_path, corrupt, first, last):
    """The file named, then what is wrong; a file that is no readable IDX file also says to replace
    it with a fresh copy."""
    root = write_tiny_mnist(tmp_path, n_train=30, n_test=20)
    corrupt(raw_dir(root))
    with pytest.raises(DataError) as e:
        load_split(str(root), "mnist", "train", verify=False)
    shown = str(e.value).replace(f"{raw_dir(root)}/", "")
    assert shown.startswith(first) and shown.endswith(last), shown


def test_checksums_refuse_files_that_are_not_the_published_mnist(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=30, n_test=20)
    with pytest.raises(DataError, match="SHA-256 of its decompressed contents does not match"):
        load_split(str(root), "mnist", "train", verify=True)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server holding tiny MNIST files, standing in for torchvision's mirrors (with
    their MD5 sums): the download path runs for real, offline. Returns the list of files served."""
    served = write_tiny_mnist(tmp_path / "mirror", n_train=40, n_test=20)
    folder = raw_dir(served)
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            if self.headers.get("Method") != "HEAD":  # torchvision probes redirects with a GET so marked
                requested.append(self.path.rsplit("/", 1)[-1])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    md5 = [(p.name, hashlib.md5(p.read_bytes()).hexdigest()) for p in sorted(folder.glob("*.gz"))]
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{server.server_port}/"])
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", md5)
    yield requested
    server.shutdown()


def test_download_auto_fetches_only_the_missing_files(tmp_path, mirror):
    root = write_tiny_mnist(tmp_path / "data", n_train=40, n_test=20)
    (raw_dir(root) / "t10k-labels-idx1-ubyte.gz").unlink()
    assert len(load_split(str(root), "mnist", "test", download="auto", verify=False)) == 20
    assert [p for p in mirror if p.endswith(".gz")] == ["t10k-labels-idx1-ubyte.gz"]
    files = sorted(p.name for p in raw_dir(root).iterdir() if not p.name.startswith("."))  # .download.lock stays
    assert files == sorted(f"{b}.gz" for pair in FILES.values() for b in pair)


def test_download_auto_fills_an_empty_folder_and_never_does_not(tmp_path, mirror):
    with pytest.raises(DataError, match="data not found"):
        load_split(str(tmp_path / "never"), "mnist", "train", download="never")
    assert mirror == []
    train = load_split(str(tmp_path / "auto"), "mnist", "train", download="auto", verify=False)
    assert len(train) == 40 and sorted(mirror) == [IMAGES, LABELS]  # the test split is fetched when it is read


def test_a_download_that_does_not_match_its_md5_leaves_nothing(tmp_path, mirror, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", [(IMAGES, "0" * 32), (LABELS, "0" * 32)])
    with pytest.raises(DataError, match=f"could not download {IMAGES} into .*File not found or corrupted"):
        load_split(str(tmp_path), "mnist", "train", download="auto")
    assert [p.name for p in raw_dir(tmp_path).iterdir()] == [".download.lock"]  # no partial or bad file


def test_offline_download_fails_within_seconds_naming_the_folder(tmp_path, monkeypatch):
    """An address that cannot be reached (nothing listens on port 9) stands in for no internet."""
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        load_split(str(tmp_path), "mnist", "train", download="auto")
    assert time.perf_counter() - start < download.TIMEOUT_S
    assert f"could not download {IMAGES} into {raw_dir(tmp_path)}" in str(e.value)
    assert "(http://127.0.0.1:9/: URLError: <urlopen error [Errno 111] Connection refused>)" in str(e.value)
    assert "Copy the four files" in str(e.value) and "t10k-labels-idx1-ubyte.gz there by hand" in str(e.value)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="data.name: unknown dataset 'cifar'; use one of mnist, fashion_mnist, kmnist"):
        dataset_info("cifar")


def test_validation_split_is_deterministic_and_disjoint(tmp_path):
    root = write_tiny_mnist(tmp_path, n_train=100, n_test=10)
    full = load_split(str(root), "mnist", "train", verify=False)
    train_a, val_a = split_validation(full, 20, seed=3)
    train_b, val_b = split_validation(full, 20, seed=3)
    _, val_c = split_validation(full, 20, seed=4)
    assert len(train_a) == 80 and len(val_a) == 20
    assert torch.equal(val_a.images, val_b.images) and not torch.equal(val_a.images, val_c.images)
    assert split_validation(full, 0, seed=3) == (full, None)
    with pytest.raises(ConfigError, match="data.val_size must be between 0 and 99"):
        split_validation(full, 100, seed=3)


def test_a_held_out_part_shares_its_splits_images_and_batches_as_a_copy_of_them_would():
    """Images whose first pixel is their row and labels that are row + 100: a part of a part draws
    the same batches, image paired with label, as a split holding copies of its images."""
    full = Split(torch.arange(50, dtype=torch.uint8).view(50, 1, 1).expand(50, 28, 28).clone(), torch.arange(50) + 100)
    train, val = split_validation(full, 10, seed=1)
    part = train.subset(torch.tensor([7, 3, 30, 12, 0]))
    assert part.stored.data_ptr() == val.stored.data_ptr() == full.stored.data_ptr()  # no image copied
    copy = Split(part.images.clone(), part.labels.clone())
    assert part.labels.tolist() == [int(p) + 100 for p in part.images[:, 0, 0]]
    for (a, y), (b, z) in zip(
        batches(part, 2, torch.Generator().manual_seed(0)), batches(copy, 2, torch.Generator().manual_seed(0))
    ):
        assert torch.equal(a, b) and torch.equal(y, z)
    assert int(part.image(2)[0, 0]) == int(part.labels[2]) - 100


def test_batches_cover_the_split_once_in_seeded_order():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 28, 28).clone(), torch.arange(10))
    seen = [y for _, y in batches(split, 4, torch.Generator().manual_seed(0))]
    assert [len(y) for y in seen] == [4, 4, 2]
    assert sorted(torch.cat(seen).tolist()) == list(range(10))
    again = [y for _, y in batches(split, 4, torch.Generator().manual_seed(0))]
    assert all(torch.equal(a, b) for a, b in zip(seen, again))
    images, labels = next(batches(split, 4))
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.float32
    assert torch.allclose(images[:, 0, 0, 0] * 255, labels.float())  # pixels scaled to [0, 1], paired with labels
    assert [len(y) for _, y in batches(split, 4, drop_last=True)] == [4, 4]
    assert [len(y) for _, y in batches(split, 4, limit=1)] == [4]
    assert num_batches(10, 4, drop_last=False, limit=None) == 3


def test_drop_last_with_a_batch_larger_than_the_split_is_a_config_error():
    with pytest.raises(ConfigError, match="data.batch_size=64 with data.drop_last=true leaves no batch of the 10"):
        num_batches(10, 64, drop_last=True, limit=None)


def test_real_mnist_passes_its_checksums(real_root):
    test = load_split(str(real_root), "mnist", "test", verify=True)
    assert len(test) == 10_000 and test.labels.bincount().tolist()[0] == 980  # 980 zeros in MNIST's test set
