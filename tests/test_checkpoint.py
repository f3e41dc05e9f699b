"""Checkpoints round-trip, and anything truncated, tampered or foreign is refused with a clear error."""

import hashlib
import io
import pickle
import random

import numpy as np
import pytest
import torch

from mnist_cnn import repro
from mnist_cnn.checkpoint import load_checkpoint, save_checkpoint
from mnist_cnn.errors import CheckpointError


def small_state():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    return model, optimizer, scheduler


def save(path, epoch=1):
    model, optimizer, scheduler = small_state()
    rng = repro.rng_state(torch.Generator().manual_seed(0))
    return save_checkpoint(path, model, optimizer, scheduler, epoch, 10 * epoch, rng), (model, scheduler)


def test_round_trip_restores_model_optimizer_scheduler_and_epoch(tmp_path):
    path, (model, scheduler) = save(tmp_path / "ckpt" / "last.pt", epoch=3)
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and state["global_step"] == 30
    assert torch.equal(state["model"]["weight"], model.weight)
    assert state["optimizer"]["state"][0]["exp_avg"].shape == (2, 4)
    assert state["scheduler"]["last_epoch"] == scheduler.last_epoch
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_every_rng_continues_where_it_was_saved(tmp_path):
    """After a restore, Python, NumPy, torch and the data generator draw what they would have drawn."""
    repro.seed_everything(5)
    generator = torch.Generator().manual_seed(5)
    state = repro.rng_state(generator)
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.randperm(9, generator=generator).tolist())
    path = save_checkpoint(tmp_path / "last.pt", *small_state(), 1, 1, state)
    repro.seed_everything(99)
    other = torch.Generator().manual_seed(99)
    repro.restore_rng_state(load_checkpoint(path)["rng"], other)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.randperm(9, generator=other).tolist()) == expected


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path, _ = save(tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be loaded safely"):
        load_checkpoint(path)


def test_a_tampered_checkpoint_is_refused(tmp_path):
    """One changed byte inside the stored state (e.g. a weight) no longer matches the stored SHA-256."""
    path, _ = save(tmp_path / "last.pt")
    outer = torch.load(path, weights_only=True)
    outer["state"][-300] ^= 0xFF
    torch.save(outer, path)
    with pytest.raises(CheckpointError, match="does not match its own SHA-256: it was modified or damaged"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (print, ("this would have run arbitrary code",))


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "inside-a-valid-checksum"])
def test_a_pickled_object_outside_the_allow_list_is_refused(tmp_path, wrapped):
    path = tmp_path / "evil.pt"
    evil = {"model": {}, "optimizer": {}, "epoch": 1, "extra": Payload()}
    if wrapped:  # a correct SHA-256 does not make arbitrary objects loadable
        buffer = io.BytesIO()
        torch.save(evil, buffer, pickle_module=pickle)
        data = buffer.getvalue()
        evil = {"sha256": hashlib.sha256(data).hexdigest(), "state": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    torch.save(evil, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        load_checkpoint(path)


def test_a_foreign_file_and_a_missing_file_are_named(tmp_path):
    foreign = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="was not written by mnist_cnn"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
