"""A sweep's parent run ends with its status whatever its report does, and a sweep stopped by Ctrl-C
leaves its job and its parent KILLED, each with the command that continues it."""

import signal
import time

import pytest
from mlflow import MlflowClient

from mnist_cnn.sweep import parent
from mnist_cnn.tracking.states import RunState
from tests.helpers import processes
from tests.helpers.mlflow_store import runs as runs_in


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
