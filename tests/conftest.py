"""Fixtures: tiny data written once, a pre-migrated MLflow store copied per test, composed configs.

Helpers live in tests/helpers; what is expensive (writing data, migrating a store) is paid once
per test run.
"""

import os
import signal
from pathlib import Path

import pytest
import torch

from mnist_cnn.config.paths import DATA_ROOT_ENV
from mnist_cnn.config.schema import DEVICE_ENV
from mnist_cnn.data.idx import load_split
from tests.helpers.config import TINY, make_cfg
from tests.helpers.data import REAL_DATA, write_tiny_mnist
from tests.helpers.digits import train_and_register
from tests.helpers.mlflow_store import copy_store, migrated_store

# pytest-xdist's workers (`make test` runs -n auto) share the machine's cores: each trains with its share, as a
# sweep's jobs side by side do (JobContext.torch_threads); all of them each would fight over every core.
TORCH_THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

# The suite's runs train on the CPU, where its bit-for-bit assertions hold, on a GPU machine too: trainer.device's
# default is cpu for every config composed here and every process started from here. The tests marked gpu say cuda.
os.environ[DEVICE_ENV] = "cpu"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA GPU: where torch sees none they are skipped, saying where they run."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make test-gpu on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def torch_threads():
    """Every test starts with the worker's share of the cores: an in-process sweep sets torch's threads
    for its jobs (runner.setup.prepare), and that must not carry over to the tests after it."""
    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """600 training and 200 test images of squares whose position is the class: read, never changed."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    return migrated_store(tmp_path_factory.mktemp("store"))


@pytest.fixture
def store_uri(store_template, tmp_path, monkeypatch) -> str:
    """A fresh copy of the migrated sqlite store in tmp_path, which is also the working folder
    (MLflow puts artifacts under ./mlruns)."""
    monkeypatch.chdir(tmp_path)
    return copy_store(store_template, tmp_path)


@pytest.fixture
def tiny_cfg(tiny_root, store_uri):
    """A config factory for fast runs on the tiny data, tracked in this test's own store."""

    def factory(*overrides: str):
        return make_cfg([f"data.root={tiny_root}", *TINY, f"tracking.uri={store_uri}", *overrides])

    return factory


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real MNIST ($MNIST_CNN_DATA_DIR, else ./data): skipped where absent, required in CI."""
    if not (REAL_DATA / "MNIST" / "raw").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide the real MNIST at {REAL_DATA}/MNIST/raw (set {DATA_ROOT_ENV}).")
        pytest.skip(f"no real MNIST at {REAL_DATA}/MNIST/raw: set {DATA_ROOT_ENV} to the folder that holds MNIST/raw")
    return REAL_DATA


@pytest.fixture(scope="session")
def mnist_test(real_root) -> tuple:
    """The real MNIST test split as numpy: uint8 images (N, 28, 28), white on black, and labels."""
    split = load_split(str(real_root), "mnist", "test")
    return split.images.numpy(), split.labels.numpy()


@pytest.fixture(scope="session")
def digits_model(real_root, store_template, tmp_path_factory) -> dict:
    """A model that reads MNIST's test digits (98.8%), registered as digits@champion in a store of its
    own: trained by the first test that asks (10-20 s), then only read, by predict, photo and export tests."""
    return train_and_register(real_root, store_template, tmp_path_factory.mktemp("digits"))


@pytest.fixture
def signals_restored():
    """For a test that runs a command's main in process: the command routes Ctrl-C and SIGTERM to
    itself (interrupts.Signals); pytest's own handlers are put back after it."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
