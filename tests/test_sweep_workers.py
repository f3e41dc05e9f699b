"""A joblib worker that dies mid-sweep (SIGKILL, as the out-of-memory killer sends): the command
says in one line which job's worker died and how to continue, exit 3; no run is left RUNNING
without a process; `resume_sweep=` finishes every job once."""

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
from joblib.externals.loky.backend.utils import _format_exitcodes

from mnist_cnn.errors import EXIT_UNAVAILABLE
from mnist_cnn.sweep import workers
from tests.helpers import processes
from tests.helpers.mlflow_store import runs as runs_in
from tests.helpers.searches import children

SWEEPS = {  # 4 jobs on 2 joblib workers, each long enough to be killed while it trains
    "grid": ("optimizer.lr=1e-3,3e-3", "seed=1,2"),
    "search": (
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "optimizer.lr=choice(1e-3,3e-3)",
        "seed=choice(1,2)",
    ),
    "search-in-batches": (
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.asynchronous=false",
        "optimizer.lr=choice(1e-3,3e-3)",
        "seed=choice(1,2)",
    ),
}


JOB = """
import sys, time
from pathlib import Path
from mnist_cnn.sweep import workers
workers.job_started(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])
print("started", flush=True)
time.sleep(60)
"""


def test_the_worker_that_died_first_is_named_and_the_one_ended_after_it_too(tmp_path):
    """Two stand-in workers record their jobs; one is SIGKILLed, the other a moment later (as loky
    ends it): the first is named with its signal, the second as ended with it, and the records go."""
    workers.watch(tmp_path, "unused", None, ["seed"])
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB, str(tmp_path), str(n), "fixed=1", f"seed={n}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in (0, 1)
    ]
    try:
        assert [job.stdout.readline() for job in jobs] == ["started\n"] * 2
        time.sleep(3 * workers.POLL_S)  # both watched
        jobs[1].send_signal(signal.SIGKILL)
        time.sleep(3 * workers.POLL_S)
        jobs[0].send_signal(signal.SIGKILL)
        error = workers.lost(BrokenProcessPool("A worker process managed by the executor was unexpectedly terminated."))
    finally:
        for job in jobs:
            job.kill()
            job.wait()
    assert isinstance(error, workers.WorkerLost) and error.exit_code == EXIT_UNAVAILABLE
    assert str(error).startswith(
        "the worker process of job 1 (seed=1, no run opened yet) was killed by SIGKILL (as the out-of-memory killer "
        "does when memory runs out); joblib then ended the workers of job 0 (seed=0, no run opened yet) with it. "
        "Nothing was tracked"
    ), error
    assert not (tmp_path / workers.RECORDS).exists()
    assert workers.lost(error) is error  # no sweep watched any more: the error as it was


@pytest.mark.parametrize(
    "exit_codes, named", [([-9], "SIGKILL"), ([-11], "SIGSEGV"), ([-9, -15], None), ([1], None)], ids=str
)
def test_loky_s_own_message_names_the_signal_when_the_watch_could_not_read_it(exit_codes, named):
    """loky may reap a dead worker before the watch reads how it ended (CI saw "ended by a signal or a
    crash" for a SIGKILLed worker); its error then names the exit codes, as loky formats them."""
    error = BrokenProcessPool(
        "A worker process managed by the executor was unexpectedly terminated. ...\n"
        f"The exit codes of the workers are {_format_exitcodes(exit_codes)}\n"
    )
    assert workers._signal_named_by_loky(error) == named


def kill_a_training_worker(job, uri: str):
    """Once two jobs train (each has logged an epoch), SIGKILL the worker process of one; returns its run."""
    deadline = time.time() + 300
    while time.time() < deadline:
        training = [r for r in runs_in(uri) if r.info.status == "RUNNING" and "train_loss" in r.data.metrics]
        if len(training) == 2:
            os.kill(int(training[0].data.tags["mnist_cnn.pid"]), signal.SIGKILL)
            return training[0]
        assert job.poll() is None, job.communicate()[0][-3000:]
        time.sleep(0.2)
    raise AssertionError("no two jobs trained together within 300 s")


@pytest.mark.slow
@pytest.mark.parametrize("sweep", SWEEPS)
def test_a_worker_killed_mid_sweep_is_named_in_one_line_and_resume_finishes_each_job_once(
    sweep, tiny_root, store_uri, tmp_path
):
    command = processes.train_command(
        tiny_root,
        store_uri,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.epochs=30",
        *SWEEPS[sweep],
        multirun=True,
    )
    job = processes.start(command, tmp_path)
    killed = kill_a_training_worker(job, store_uri)
    output = job.communicate(timeout=120)[0]
    assert job.returncode == 3, output[-3000:]
    assert "Traceback" not in output and "TerminatedWorkerError" not in output, output[-3000:]
    parent, jobs = children(store_uri)
    said = [line for line in output.splitlines() if line.startswith("mnist-cnn-train: ")]
    assert len(said) == 1, output[-3000:]
    assert re.search(
        rf"the worker process of job \d+ \([^)]*, run {killed.info.run_id}\) was killed by SIGKILL .*"
        rf"Continue the sweep, each job once .*resume_sweep={parent.info.run_id}",
        said[0],
    ), said[0]
    assert {r.info.status for r in [parent, *jobs]} <= {"FINISHED", "KILLED"}  # no run RUNNING without a process
    assert parent.info.status == "KILLED" and "resume_sweep=" in parent.data.tags["resume_command"]
    stopped = {r.info.run_id: r for r in jobs if r.info.status == "KILLED"}
    assert (
        stopped[killed.info.run_id]
        .data.tags["interrupted"]
        .startswith("its joblib worker process was killed by SIGKILL")
    )
    sibling = [r for r in stopped.values() if r.info.run_id != killed.info.run_id]
    assert len(sibling) == 1 and "joblib ended its worker process" in sibling[0].data.tags["interrupted"]
    assert "joblib then ended the workers of job " in said[0] and sibling[0].info.run_id in said[0]
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").rglob(".workers"))

    out = processes.run(
        [*processes.TRAIN, "-m", f"resume_sweep={parent.info.run_id}", f"tracking.uri={store_uri}"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    parent, after = children(store_uri)
    assert sorted((r.data.params["optimizer.lr"], r.data.params["seed"]) for r in after) == [
        (lr, s) for lr in ("0.001", "0.003") for s in ("1", "2")
    ]  # each job once, in a run of its own
    assert {r.info.status for r in after} == {"FINISHED"} and set(stopped) <= {r.info.run_id for r in after}
