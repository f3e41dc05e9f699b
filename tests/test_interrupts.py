"""Ctrl-C and SIGTERM: the first stops a run at the next step, a second at once, and none can leave
a run RUNNING or half-recorded."""

import signal

import pytest
from mlflow import MlflowClient

from mnist_cnn import interrupts
from mnist_cnn.runner import setup, start, train
from tests.helpers.mlflow_store import all_runs, history, only_run

SIGINT = int(signal.SIGINT)
SIGTERM = int(signal.SIGTERM)


@pytest.fixture(autouse=True)
def clean_state():
    interrupts.reset()
    yield
    interrupts.reset()


def test_outside_a_run_a_signal_stops_at_once():
    with pytest.raises(KeyboardInterrupt):
        interrupts._handle(SIGINT, None)


def test_in_a_run_the_first_signal_waits_for_the_next_step_and_the_second_does_not():
    with interrupts.graceful():
        interrupts._handle(SIGINT, None)  # only asks
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()  # ... and the step loop stops here
        with pytest.raises(KeyboardInterrupt):
            interrupts._handle(SIGINT, None)  # the user insists


def test_between_a_sweeps_jobs_the_first_signal_stops_the_next_job_as_it_starts():
    interrupts.job_ended(sweeping=True)
    interrupts._handle(SIGTERM, None)  # Hydra builds the next job's config now: nothing is raised in it
    with pytest.raises(KeyboardInterrupt, match="between jobs"):
        interrupts.job_started()
    interrupts.job_ended(sweeping=True)
    interrupts._handle(SIGTERM, None)
    with pytest.raises(KeyboardInterrupt):
        interrupts._handle(SIGTERM, None)  # the user insists
    interrupts.reset()
    interrupts.job_ended(sweeping=False)  # a single run's end: nothing to wait for
    with pytest.raises(KeyboardInterrupt):
        interrupts._handle(SIGTERM, None)


def test_while_a_run_is_recorded_signals_wait_then_stop():
    with pytest.raises(KeyboardInterrupt, match="while the run was being recorded"):
        with interrupts.shielded():
            interrupts._handle(SIGINT, None)
            interrupts._handle(SIGINT, None)  # neither interrupts the recording
            recorded = True
    assert recorded
    with interrupts.shielded(then_stop=False):  # a final status being written: the stop is already under way
        interrupts._handle(SIGINT, None)


def test_ctrl_c_twice_ends_the_run_killed_even_during_its_final_write(tiny_cfg, store_uri, tmp_path, monkeypatch):
    """Pressed twice in epoch 2 and again while KILLED is written: the run still ends KILLED, with
    epoch 1 complete and a resume command."""
    real_epoch, real_terminated = train.train_epoch, MlflowClient.set_terminated

    def impatient(*args, **kwargs):
        if args[2] == 2:  # train_epoch(state, settings, epoch, world)
            interrupts._handle(SIGINT, None)
            interrupts._handle(SIGINT, None)
        return real_epoch(*args, **kwargs)

    def terminated(self, *args, **kwargs):
        interrupts._handle(SIGINT, None)  # a third Ctrl-C, while the status is being written
        return real_terminated(self, *args, **kwargs)

    monkeypatch.setattr(train, "train_epoch", impatient)
    monkeypatch.setattr(MlflowClient, "set_terminated", terminated)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg("trainer.epochs=3", "tracking.log_model=false"), tmp_path / "out")
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
        interrupts._handle(SIGINT, None)
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
    monkeypatch.setattr(start, "job_overrides", lambda: [f"resume={run.info.run_id}"])
    train.run(tiny_cfg(f"resume={run.info.run_id}"), tmp_path / "again")
    resumed = only_run(store_uri)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_at_epoch"] == "1"
