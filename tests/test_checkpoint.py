"""Checkpoints round-trip, and anything truncated, tampered or foreign is refused with a clear error."""

import pickle

import pytest
import torch

from mnist_cnn.checkpoint import load_checkpoint, save_checkpoint
from mnist_cnn.errors import CheckpointError


def small_state():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    return model, optimizer, scheduler


def test_round_trip_restores_model_optimizer_scheduler_and_epoch(tmp_path):
    model, optimizer, scheduler = small_state()
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", model, optimizer, scheduler, epoch=3)
    state = load_checkpoint(path)
    assert state["epoch"] == 3
    assert torch.equal(state["model"]["weight"], model.weight)
    assert state["optimizer"]["state"][0]["exp_avg"].shape == (2, 4)
    assert state["scheduler"]["last_epoch"] == scheduler.last_epoch
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_truncated_checkpoint_is_refused(tmp_path):
    model, optimizer, scheduler = small_state()
    path = save_checkpoint(tmp_path / "last.pt", model, optimizer, scheduler, epoch=1)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be loaded safely"):
        load_checkpoint(path)


class Payload:
    def __reduce__(self):
        return (print, ("this would have run arbitrary code",))


def test_a_pickled_object_outside_the_allow_list_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "extra": Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        load_checkpoint(path)


def test_a_foreign_file_and_a_missing_file_are_named(tmp_path):
    foreign = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="lacks epoch, model, optimizer; it was not written by mnist_cnn"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
