"""Splits held in memory, the seeded validation hold-out, and batches drawn by permutation.

No per-sample PIL conversion and no workers: a batch is one index into a uint8 tensor that lives
on the training device.
"""

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
from omegaconf import DictConfig

from mnist_cnn.data import augment as augmentation
from mnist_cnn.errors import ConfigError


@dataclass
class Split:
    """One split held in memory: uint8 images (N, 28, 28) and int64 labels (N,).

    A part of a split (`subset`: the validation hold-out, and the images left to train on) keeps
    its own labels but shares the images: `rows` says which of `stored` are its own, in order. So
    holding out 5,000 of 60,000 images copies none (copying the other 55,000 cost every run 18 ms:
    docs/speed.md), and a GPU holds the training images once."""

    stored: torch.Tensor  # the images: all of this split's, or those of the split it is part of
    labels: torch.Tensor
    sha256: str = ""  # of the decompressed image and label files, as read
    rows: Optional[torch.Tensor] = None  # this split's images among `stored` (None: all of them), on their device

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> torch.Tensor:
        """This split's images, (N, 28, 28): a copy for a part of a split."""
        return self.stored if self.rows is None else self.stored.index_select(0, self.rows)

    def image(self, i: int) -> torch.Tensor:
        return self.stored[i if self.rows is None else int(self.rows[i])]

    def to(self, device: torch.device) -> "Split":
        rows = None if self.rows is None else self.rows.to(device)
        return Split(self.stored.to(device), self.labels.to(device), self.sha256, rows)

    def subset(self, index: torch.Tensor) -> "Split":
        """The images at `index` (positions in this split), sharing this split's stored images."""
        index = index.to(self.labels.device)
        rows = index if self.rows is None else self.rows.index_select(0, index)
        return Split(self.stored, self.labels.index_select(0, index), rows=rows)


def split_validation(train: Split, val_size: int, seed: int) -> Tuple[Split, Optional[Split]]:
    """Hold out `val_size` training images, chosen by a permutation seeded with `seed`."""
    if val_size == 0:
        return train, None
    if not 0 < val_size < len(train):
        raise ConfigError(
            f"data.val_size must be between 0 and {len(train) - 1} (the training set size), got {val_size}."
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(order[val_size:]), train.subset(order[:val_size])


def batches(
    split: Split,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
    limit: Optional[int] = None,
    shard: Tuple[int, int] = (0, 1),
    augment: Optional[DictConfig] = None,
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images as float in [0, 1] with shape (B, 1, 28, 28), labels); shuffled when given a
    generator, and warped by `augment` (`data.augment`, drawn from the same generator) when it asks.

    With `shard=(rank, world)` (trainer.strategy=ddp), `batch_size` is the global batch and this rank
    gets `index[rank::world]` of each: every rank draws the same permutation (and warps) from an
    equally seeded generator, so the shards are disjoint and together the batch."""
    rank, world = shard
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    device = split.labels.device
    order = _to_device(order, device)
    stored = order if split.rows is None else split.rows.index_select(0, order)  # the same images among `stored`
    count = num_batches(n, batch_size, drop_last, limit, world)
    warps = generator is not None and augment is not None and augmentation.active(augment)
    if warps:  # the whole epoch's warps in one draw, moved once like the permutation: no copy in the step
        thetas = _to_device(augmentation.draw(augment, count * batch_size, generator), device)
    for start in range(0, count * batch_size, batch_size):
        size = min(batch_size, n - start)
        # equal shards, never an empty one: a last partial batch is cut to a multiple of world
        shard = slice(start, start + size - size % world)
        images = split.stored.index_select(0, stored[shard][rank::world]).unsqueeze(1).float().div_(255)
        if warps:
            images = augmentation.warp(images, thetas[shard][rank::world])
        yield images, split.labels.index_select(0, order[shard][rank::world])


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor drawn on the CPU, on `device`; to a GPU from pinned memory without waiting for the
    copy (a copy from pageable memory would hold the host until the GPU got there)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def num_batches(n: int, batch_size: int, drop_last: bool, limit: Optional[int], world: int = 1) -> int:
    """Batches in one epoch over `n` images; an epoch with none is an error, never a division by zero.
    Shared by `world` processes, a last batch smaller than `world` is left out: some would get no image."""
    full = n // batch_size if drop_last or n % batch_size < world else -(-n // batch_size)
    if full == 0:
        raise ConfigError(
            f"data.batch_size={batch_size} with data.drop_last=true leaves no batch of the {n} training images; "
            "lower data.batch_size or set data.drop_last=false."
        )
    return full if limit is None else min(full, limit)
