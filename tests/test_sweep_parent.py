"""A sweep's parent run ends with its status whatever its report does, and a sweep stopped by Ctrl-C
leaves its job and its parent KILLED, each with the command that continues it."""

import atexit
import signal
import time

import pytest
from mlflow import MlflowClient

from mnist_cnn.interrupts import SIGNALS, Signals
from mnist_cnn.sweep import parent
from mnist_cnn.sweep.callback import MlflowSweepCallback
from mnist_cnn.tracking.links import run_url
from mnist_cnn.tracking.states import RunState
from tests.helpers import processes
from tests.helpers.mlflow_store import runs as runs_in
from tests.helpers.searches import sweep_config


@pytest.mark.parametrize("state, status", [(RunState.FINISHED, "FINISHED"), (RunState.STOPPED, "KILLED")])
def test_a_parent_whose_report_fails_still_ends_with_its_status(tiny_cfg, store_uri, monkeypatch, state, status):
    """An artifact upload that fails (here each figure's): the error is raised, after the run ended."""
    cfg = tiny_cfg()
    run_id, heartbeat = parent.open_parent_run(cfg, "sweep", {})
    heartbeat.stop()

    def upload_fails(*args, **kwargs):
        raise RuntimeError("the artifact store is full")

    monkeypatch.setattr(MlflowClient, "log_figure", upload_fails)
    with pytest.raises(RuntimeError, match="the artifact store is full"):
        parent.close_parent_run(cfg, run_id, state, [], time.time())
    run = MlflowClient(store_uri).get_run(run_id)
    assert run.info.status == status
    resume = f"mnist-cnn-train -m resume_sweep={run_id} tracking.uri={store_uri}" if status == "KILLED" else None
    assert run.data.tags.get("resume_command") == resume


@pytest.mark.slow
def test_ctrl_c_during_a_sweeps_job_ends_the_job_and_the_parent_killed_with_their_resume_commands(
    tiny_root, store_uri, tmp_path
):
    command = processes.train_command(
        tiny_root, store_uri, "seed=1,2", "trainer.epochs=50", "tracking.log_model=false", multirun=True
    )
    job = processes.start(command, tmp_path)
    for line in job.stdout:
        if "epoch 1/50" in line:  # the first job trains its second epoch
            job.send_signal(signal.SIGINT)
            break
    output = line + job.communicate(timeout=120)[0]
    assert job.returncode == 130, output[-3000:]
    found = runs_in(store_uri)
    (sweep,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    (stopped,) = [r for r in found if r is not sweep]  # the second job never started
    assert (sweep.info.status, stopped.info.status) == ("KILLED", "KILLED")
    resume_sweep = f"mnist-cnn-train -m resume_sweep={sweep.info.run_id} tracking.uri={store_uri}"
    assert sweep.data.tags["resume_command"] == resume_sweep
    assert (
        stopped.data.tags["resume_command"] == f"mnist-cnn-train resume={stopped.info.run_id} tracking.uri={store_uri}"
    )
    assert f"sweep stopped; finish it, each job once, with:\n  {resume_sweep}" in output


def test_a_signal_as_the_sweep_closes_its_parent_leaves_it_killed_not_running(tiny_cfg, store_uri, monkeypatch):
    """Once in about twenty runs a sweep's parent stayed RUNNING after SIGTERM (exit 130): the close
    took the parent from the callback first, and a signal that landed before the report's try
    (while it connects and imports pandas and matplotlib: seconds) left the exit handler's close
    nothing to close. Here the signal lands there every time."""
    cfg = tiny_cfg()
    callback = MlflowSweepCallback()
    callback.run_id, callback.heartbeat = parent.open_parent_run(cfg, "sweep", {})
    run_id, connect, landed = callback.run_id, parent.store.connect, []

    def signal_lands_once(*args, **kwargs):
        if not landed:
            landed.append(True)
            raise KeyboardInterrupt("SIGTERM")
        return connect(*args, **kwargs)

    monkeypatch.setattr(parent.store, "connect", signal_lands_once)
    with pytest.raises(KeyboardInterrupt):
        callback.on_multirun_end(cfg)  # the last job ended: the sweep closes its parent
    callback._close(cfg, RunState.STOPPED)  # what the exit handler runs as the command exits 130
    run = MlflowClient(store_uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["resume_command"].endswith(
        f"resume_sweep={run_id} tracking.uri={store_uri}"
    )


def test_a_signal_as_the_sweep_opens_its_parent_waits_until_the_exit_handler_can_close_it(
    tiny_root, store_uri, tmp_path, monkeypatch
):
    """A SIGTERM just after the parent was created, before the exit handler that closes it was
    registered, left it RUNNING; now it waits for the parent to be the callback's, then stops."""
    config = sweep_config(tmp_path, f"data.root={tiny_root}", f"tracking.uri={store_uri}")
    opened, registered = parent.open_parent_run, []

    def sigterm_after_create(*args, **kwargs):
        created = opened(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)
        return created

    monkeypatch.setattr(parent, "open_parent_run", sigterm_after_create)
    monkeypatch.setattr(atexit, "register", lambda *handler: registered.append(handler))
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    Signals().install()  # as mnist-cnn-train routes them
    try:
        with pytest.raises(KeyboardInterrupt):
            MlflowSweepCallback()._open(config)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    (close, *arguments), *_ = [h for h in registered if getattr(h[0], "__name__", "") == "_close"]  # not MLflow's
    close(*arguments)
    (run,) = runs_in(store_uri)
    assert run.info.status == "KILLED"


def test_a_sweeps_parent_link_comes_with_the_mlflow_ui_command_that_serves_its_store(tiny_cfg, store_uri):
    """The parent's link, which the sweep prints as it ends, has the same command beside it as a run's."""
    cfg = tiny_cfg()
    run_id, heartbeat = parent.open_parent_run(cfg, "sweep", {})
    heartbeat.stop()
    _, link = parent.close_parent_run(cfg, run_id, RunState.FINISHED, [], time.time())
    experiment = MlflowClient(store_uri).get_run(run_id).info.experiment_id
    command = f"mlflow ui --backend-store-uri {store_uri} --host 127.0.0.1 --port 5000"
    assert link == f"{run_url(store_uri, experiment, run_id)}  (serve this store's UI with: {command})"
