"""A run's training state before its first epoch, built as `fit` builds it, without tracking."""

from mnist_cnn.config.job import JobContext
from mnist_cnn.engine.distributed import SINGLE
from mnist_cnn.runner import setup


def fresh_state(cfg):
    """(TrainingState, StepSettings) for `cfg`: model and data on the device, optimizer, scheduler, generator."""
    job = JobContext()
    state, settings, _ = setup.build_state(cfg, job, setup.prepare(cfg, job, SINGLE), None, SINGLE)
    return state, settings
