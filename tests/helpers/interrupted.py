"""Runs cut short in process, as Ctrl-C would cut them, and resumed as `resume=` would resume them."""

from pathlib import Path

import pytest

from mnist_cnn.runner import start, train
from mnist_cnn.tracking import run as tracking_run
from tests.helpers.mlflow_store import only_run

FAST = ("trainer.epochs=2", "tracking.log_model=false")


def interrupt_at(monkeypatch, epoch: int) -> None:
    """Make training stop as Ctrl-C would, at the start of `epoch`."""
    real = train.train_epoch

    def train_epoch(*args, **kwargs):
        if args[2] == epoch:  # train_epoch(state, settings, epoch, world)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", train_epoch)


def killed_in_epoch_2(cfg, uri, out, monkeypatch) -> str:
    """Train `cfg` until Ctrl-C in epoch 2; returns the KILLED run's id (monkeypatches undone)."""
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, out)
    monkeypatch.undo()
    monkeypatch.chdir(out.parent)
    return only_run(uri).info.run_id


def resume(monkeypatch, cfg, target, *overrides):
    """`mnist-cnn-train resume=TARGET OVERRIDES`, in process, from the test's folder."""
    for module in (start, tracking_run):  # the command line as Hydra would give it
        monkeypatch.setattr(module, "job_overrides", lambda: [f"resume={target}", *overrides])
    cfg.resume = target
    return train.run(cfg, Path.cwd() / "resumed").metrics
