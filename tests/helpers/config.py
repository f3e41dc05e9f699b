"""The real config tree, composed as `mnist-cnn-train OVERRIDES` would; each composition once."""

import copy
from functools import lru_cache
from typing import Iterable

from omegaconf import DictConfig

from mnist_cnn.config import tree

# Small and fast: tiny data with checksums off, a 100-image validation split, one epoch, no bar.
TINY = (
    "data.verify_checksums=false",
    "data.download=never",
    "data.val_size=100",
    "data.batch_size=50",
    "trainer.epochs=1",
    "trainer.progress=false",
)


def make_cfg(overrides: Iterable[str] = ()) -> DictConfig:
    """A fresh copy of the composed config for `overrides` (compositions are cached)."""
    return copy.deepcopy(_compose(tuple(overrides)))


@lru_cache(maxsize=None)
def _compose(overrides: tuple) -> DictConfig:
    return tree.compose(list(overrides))
