"""Ctrl-C and SIGTERM: the first stops a run at the next step, a second at once, and none can leave
a run RUNNING or half-recorded."""

import signal

import pytest
from mlflow import MlflowClient

from mnist_cnn import interrupts
from mnist_cnn.config.job import JobContext
from mnist_cnn.interrupts import Signals, Stops
from mnist_cnn.runner import setup, train
from mnist_cnn.runner.hooks import EpochHook
from tests.helpers.interrupted import resume
from tests.helpers.mlflow_store import all_runs, history, only_run

SIGINT = int(signal.SIGINT)
SIGTERM = int(signal.SIGTERM)


@pytest.fixture(autouse=True)
def own_handlers():
    """A test installs the handlers it needs; the process's own come back after it."""
    saved = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_outside_a_run_a_signal_stops_at_once():
    with pytest.raises(KeyboardInterrupt):
        Stops().handle(SIGINT)


def test_in_a_run_the_first_signal_waits_for_the_next_step_and_the_second_does_not():
    stops = Stops()
    with stops.graceful():
        stops.handle(SIGINT)  # only asks
        with pytest.raises(KeyboardInterrupt):
            stops.check()  # ... and the step loop stops here
        with pytest.raises(KeyboardInterrupt):
            stops.handle(SIGINT)  # the user insists


def test_the_process_signals_reach_the_job_that_runs_now():
    signals = Signals()
    signals.install()
    first = signals.job_started()
    with first.graceful():
        signal.raise_signal(SIGTERM)
    assert first.requested()
    signals.job_ended(sweeping=False)
    second = signals.job_started()  # a job of its own: the first one's stop is not its stop
    assert not second.requested()


def test_between_a_sweeps_jobs_the_first_signal_stops_the_next_job_as_it_starts():
    signals = Signals()
    signals.install()
    signals.job_started()
    signals.job_ended(sweeping=True)
    signal.raise_signal(SIGTERM)  # Hydra builds the next job's config now: nothing is raised in it
    with pytest.raises(KeyboardInterrupt, match="between jobs"):
        signals.job_started()
    signals.job_ended(sweeping=True)
    signal.raise_signal(SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(SIGTERM)  # the user insists
    signals = Signals()
    signals.install()
    signals.job_started()
    signals.job_ended(sweeping=False)  # a single run's end: nothing to wait for
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(SIGTERM)


def test_while_a_run_is_recorded_signals_wait_then_stop():
    with pytest.raises(KeyboardInterrupt, match="while the run was being recorded"):
        with interrupts.held():
            signal.raise_signal(SIGINT)
            signal.raise_signal(SIGINT)  # neither interrupts the recording
            recorded = True
    assert recorded
    with interrupts.held(then_stop=False):  # a final status being written: the stop is already under way
        signal.raise_signal(SIGINT)


class Impatient(EpochHook):
    """Ctrl-C pressed twice as epoch 1 ends: the second press raises at once."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx

    def should_stop(self, history) -> bool:
        self.ctx.stops.handle(SIGINT)
        self.ctx.stops.handle(SIGINT)
        return False


def test_ctrl_c_twice_ends_the_run_killed_even_during_its_final_write(tiny_cfg, store_uri, tmp_path, monkeypatch):
    """Pressed twice after epoch 1 and again while KILLED is written: the run still ends KILLED, with
    epoch 1 complete and a resume command."""
    real_terminated = MlflowClient.set_terminated

    def terminated(self, *args, **kwargs):
        signal.raise_signal(SIGINT)  # a third Ctrl-C, while the status is being written
        return real_terminated(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_terminated", terminated)
    ctx = JobContext()
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg("trainer.epochs=3", "tracking.log_model=false"), tmp_path / "out", ctx, [Impatient(ctx)])
    run = only_run(store_uri)
    assert run.info.status == "KILLED" and run.data.tags["resume_command"].startswith(
        f"mnist-cnn-train resume={run.info.run_id}"
    )
    assert [step for step, _ in history(store_uri, run.info.run_id)["train_loss"]] == [1]


def test_a_stop_during_start_up_leaves_no_run_at_all(tiny_cfg, store_uri, tmp_path, monkeypatch):
    """Before a run is recorded there is nothing to resume, so nothing is recorded."""

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(setup, "load_split", stopped)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(), tmp_path / "out")
    assert all_runs(store_uri) == []


def test_a_stop_while_the_run_is_opened_waits_then_leaves_a_resumable_run(tiny_cfg, store_uri, tmp_path, monkeypatch):
    """SIGTERM while the run's params and config are written: the run is recorded whole, then KILLED;
    resuming it trains from epoch 1 in the same run."""
    real = MlflowClient.log_text

    def log_text(self, *args, **kwargs):
        signal.raise_signal(SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_text", log_text)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg("tracking.log_model=false"), tmp_path / "out")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    run = only_run(store_uri)
    assert run.info.status == "KILLED" and "config.yaml" in {
        a.path for a in MlflowClient(store_uri).list_artifacts(run.info.run_id)
    }
    resume(tiny_cfg(), run.info.run_id)
    resumed = only_run(store_uri)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_at_epoch"] == "1"
