"""Runs cut short in process, as Ctrl-C cuts them, and resumed as `resume=` resumes them."""

import signal
from pathlib import Path

import pytest

from mnist_cnn.config.job import JobContext
from mnist_cnn.runner import train
from mnist_cnn.runner.hooks import EpochHook
from tests.helpers.mlflow_store import only_run

FAST = ("trainer.epochs=2", "tracking.log_model=false")


class CtrlC(EpochHook):
    """Ctrl-C as it comes at the start of `epoch`: delivered to the job's stop requests once the
    epoch before has ended (or, for epoch 1, once the run is recorded), so the run stops before
    the epoch's first step."""

    def __init__(self, ctx: JobContext, epoch: int):
        self.ctx, self.epoch = ctx, epoch

    def opened(self, tracker) -> None:
        if self.epoch == 1:
            self.ctx.stops.handle(signal.SIGINT)

    def should_stop(self, history) -> bool:
        if len(history) == self.epoch - 1:
            self.ctx.stops.handle(signal.SIGINT)
        return False


def ctrl_c_in_epoch(epoch: int) -> dict:
    """`train.run`'s ctx and hooks for a job stopped by Ctrl-C at the start of `epoch`."""
    ctx = JobContext()
    return {"ctx": ctx, "hooks": [CtrlC(ctx, epoch)]}


def killed_in_epoch_2(cfg, uri, out) -> str:
    """Train `cfg` until Ctrl-C in epoch 2; returns the STOPPED (KILLED) run's id."""
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, out, **ctrl_c_in_epoch(2))
    return only_run(uri).info.run_id


def resume(cfg, target, *overrides):
    """`mnist-cnn-train resume=TARGET OVERRIDES`, in process, from the test's folder."""
    cfg.resume = target
    ctx = JobContext(overrides=(f"resume={target}", *overrides))  # the command line as Hydra gives it
    return train.run(cfg, Path.cwd() / "resumed", ctx).metrics
