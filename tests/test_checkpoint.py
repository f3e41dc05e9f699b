"""Checkpoints round-trip, and anything truncated, tampered or foreign is refused with a clear error."""

import contextlib
import hashlib
import io
import os
import pickle
import random
import subprocess

import numpy as np
import pytest
import torch

from mnist_cnn.engine import repro
from mnist_cnn.engine.checkpoint import load_checkpoint, save_checkpoint
from mnist_cnn.errors import CheckpointError
from mnist_cnn.runner import train
from tests.helpers.mlflow_store import only_run

CPU = torch.device("cpu")


def small_state():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    return model, optimizer, scheduler


def state(model, optimizer, scheduler, epoch, rng, **extra):
    return dict(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        epoch=epoch,
        global_step=10 * epoch,
        rng=rng,
        **extra,
    )


def save(path, epoch=1, **extra):
    model, optimizer, scheduler = small_state()
    rng = repro.rng_state(torch.Generator().manual_seed(0), CPU)
    return save_checkpoint(path, state(model, optimizer, scheduler, epoch, rng, **extra)), (model, scheduler)


def test_round_trip_restores_model_optimizer_scheduler_epoch_and_the_config(tmp_path):
    path, (model, scheduler) = save(
        tmp_path / "ckpt" / "last.pt", epoch=3, config="seed: 3\n", run_id="abc", metrics={"val_acc": 0.5}
    )
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["global_step"] == 30
    assert torch.equal(loaded["model"]["weight"], model.weight)
    assert loaded["optimizer"]["state"][0]["exp_avg"].shape == (2, 4)
    assert loaded["scheduler"]["last_epoch"] == scheduler.last_epoch
    assert (loaded["config"], loaded["run_id"], loaded["metrics"]) == ("seed: 3\n", "abc", {"val_acc": 0.5})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


@pytest.fixture
def two_gpus(monkeypatch) -> dict:
    """The CUDA generators of two GPUs stood in for on the CPU, {index: state}, as rank 0's process
    sees them when it saves: cuda:0 drew (its state 5), cuda:1 did not (its state 0)."""
    gpus = {0: torch.tensor([5], dtype=torch.uint8), 1: torch.tensor([0], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": gpus[torch.device(device).index].clone())
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [gpus[0].clone(), gpus[1].clone()])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": gpus.update({device.index: state}))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: gpus.update(enumerate(states)))
    return gpus


def drew_on(gpus: dict) -> None:
    """Both GPUs drew after the checkpoint (state 9), so that a restore shows where it went."""
    gpus.update({0: torch.tensor([9], dtype=torch.uint8), 1: torch.tensor([9], dtype=torch.uint8)})


def test_under_ddp_each_rank_restores_dropouts_rng_on_its_own_gpu(two_gpus):
    """Rank r trains on cuda:r, and every rank's draws are alike. Saving every device's state
    (get_rng_state_all) on rank 0 had rank 1 restore rank 0's untouched cuda:1; now rank 0 saves its
    own device's state and each rank puts it on its own device."""
    saved = repro.rng_state(torch.Generator(), torch.device("cuda", 0))  # rank 0's checkpoint
    drew_on(two_gpus)
    repro.restore_rng_state(saved, torch.Generator(), torch.device("cuda", 1))  # rank 1 resumes
    assert two_gpus[1].item() == 5 and two_gpus[0].item() == 9  # its own GPU, as rank 0's was: no other touched


def test_a_checkpoint_from_before_with_every_devices_rng_loads_and_each_rank_restores_rank_0s_on_its_own_gpu(
    tmp_path, two_gpus
):
    """Checkpoints written before held get_rng_state_all() of rank 0's process, whose cuda:1 entry it
    never drew from: rank 1 takes the cuda:0 entry onto cuda:1 (it took the cuda:1 entry, and set
    every GPU), and a run resumed on a CPU touches no GPU."""
    before = repro.rng_state(torch.Generator(), CPU) | {"cuda": torch.cuda.get_rng_state_all()}
    path = save_checkpoint(tmp_path / "last.pt", state(*small_state(), 1, before))
    saved = load_checkpoint(path)["rng"]  # read weights_only, as every checkpoint is
    drew_on(two_gpus)
    repro.restore_rng_state(saved, torch.Generator(), torch.device("cuda", 1))  # rank 1 resumes
    assert two_gpus[1].item() == 5 and two_gpus[0].item() == 9
    drew_on(two_gpus)
    repro.restore_rng_state(saved, torch.Generator(), CPU)
    assert two_gpus[0].item() == two_gpus[1].item() == 9


def test_every_rng_continues_where_it_was_saved(tmp_path):
    """After a restore, Python, NumPy, torch and the data generator draw what they would have drawn."""
    repro.seed_everything(5)
    generator = torch.Generator().manual_seed(5)
    rng = repro.rng_state(generator, CPU)
    expected = (
        random.random(),
        np.random.rand(),
        torch.rand(1).item(),
        torch.randperm(9, generator=generator).tolist(),
    )
    path = save_checkpoint(tmp_path / "last.pt", state(*small_state(), 1, rng))
    repro.seed_everything(99)
    other = torch.Generator().manual_seed(99)
    repro.restore_rng_state(load_checkpoint(path)["rng"], other, CPU)
    assert (
        random.random(),
        np.random.rand(),
        torch.rand(1).item(),
        torch.randperm(9, generator=other).tolist(),
    ) == expected


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path, _ = save(tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be read .*: it is truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="run 0123 artifact checkpoints/last.pt cannot be read"):
        load_checkpoint(path, label="run 0123 artifact checkpoints/last.pt")  # named as the user knows it


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
        evil = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "state": torch.frombuffer(bytearray(data), dtype=torch.uint8),
        }
    torch.save(evil, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="holds objects other than tensors") as e:
        load_checkpoint(path)
    assert "weights_only" not in str(e.value)  # never the advice to unpickle an untrusted file


def test_a_foreign_file_and_a_missing_file_are_named(tmp_path):
    foreign = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="was not written by mnist_cnn"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 256 KiB (tmpfs): mounting one needs root, as CI and this machine have."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)])
    if not mounted or mounted.returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder):
    """Write zeros into `folder` until its file system says it is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, bytes(4096))
    os.close(fd)


def read_only(folder):
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@pytest.mark.parametrize("fault,cause", [(fill, "no space left on device"), (read_only, "read-only file system")])
def test_a_full_or_read_only_disk_is_named_and_leaves_the_last_checkpoint_and_no_temporary_file(
    small_disk, fault, cause
):
    path, _ = save(small_disk / "checkpoints" / "last.pt", epoch=1, run_id="abc")
    fault(small_disk)
    with pytest.raises(CheckpointError) as error:
        save(path, epoch=2, run_id="abc")
    assert str(error.value) == (
        f"could not write checkpoint {path}: {cause} (folder {path.parent}). The last checkpoint written is intact; "
        "make room there (or choose another hydra.run.dir), then continue with mnist-cnn-train resume=abc."
    )
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in path.parent.iterdir()] == ["last.pt"]


@pytest.mark.slow
def test_a_run_whose_disk_is_full_ends_failed_with_the_cause(tiny_cfg, store_uri, small_disk):
    """The whole run: its first checkpoint does not fit, so the run is FAILED with the cause as its error."""
    fill(small_disk)
    with pytest.raises(CheckpointError, match="no space left on device"):
        train.run(tiny_cfg(), small_disk / "out")
    run = only_run(store_uri)
    assert run.info.status == "FAILED" and "no space left on device" in run.data.tags["error"]
