"""The contract between a sweep and its jobs: the context a job reads once (Hydra, the environment,
the sweep file), the one word for how a run ended, the one way a run restarts, and the state a job
owns instead of the process."""

import os
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow import MlflowClient
from omegaconf import open_dict

from mnist_cnn.cli.common import load_model
from mnist_cnn.config import tree
from mnist_cnn.config.job import TRIAL_ENV, JobContext, SlurmJob, Study, SweepFile, Torchrun, Trial
from mnist_cnn.interrupts import Stops
from mnist_cnn.runner import train
from mnist_cnn.runner.restart import Kind, Restart
from mnist_cnn.sweep.callback import side_by_side
from mnist_cnn.timing import JobClock
from mnist_cnn.tracking import store
from mnist_cnn.tracking.ending import end_run
from mnist_cnn.tracking.states import RunState, mlflow_status, state_of
from tests.helpers.mlflow_store import all_runs


def hydra_job(tmp_path: Path, multirun: bool, launcher: str = "basic") -> None:
    """Hydra's config of a job (overrides optimizer.lr=0.01 seed=3), as Hydra sets it while its task runs."""
    tree.register()
    with initialize_config_dir(config_dir=str(tree.CONF_DIR), version_base="1.3"):
        cfg = compose(tree.CONFIG_NAME, [f"hydra/launcher={launcher}", "optimizer.lr=0.01", "seed=3"], True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["optimizer.lr=0.01", "seed=3"]
        cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "0")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)


@pytest.fixture
def hydra_reset():
    yield
    HydraConfig.instance().cfg = None


def test_a_sweep_job_reads_its_overrides_sweep_trial_and_environment_once(tmp_path, monkeypatch, hydra_reset):
    study = Study("search", str(tmp_path / "study.journal"))
    (tmp_path / "sweep").mkdir()
    SweepFile("p" * 32, ("optimizer.lr",), study).write(tmp_path / "sweep")
    monkeypatch.setenv(TRIAL_ENV, "7")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    hydra_job(tmp_path, multirun=True)
    clock, stops = JobClock(), Stops()
    ctx = JobContext.read(clock, stops)
    assert ctx.overrides == ("optimizer.lr=0.01", "seed=3") and ctx.multirun and ctx.shares_process
    assert not ctx.in_pool
    assert ctx.sweep == SweepFile("p" * 32, ("optimizer.lr",), study) and ctx.trial == Trial(study, 7)
    assert ctx.slurm == SlurmJob("123", 2) and ctx.torchrun == Torchrun(1, 2, 1)
    assert (ctx.cwd, ctx.output_dir) == (tmp_path, tmp_path / "sweep" / "0")
    assert ctx.clock is clock and ctx.stops is stops  # what the job owns, from its first moment


def test_a_single_run_has_no_sweep_and_a_grid_job_no_trial(tmp_path, monkeypatch, hydra_reset):
    monkeypatch.delenv(TRIAL_ENV, raising=False)
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "sweep").mkdir()
    SweepFile("p" * 32, ("seed",)).write(tmp_path / "sweep")
    hydra_job(tmp_path, multirun=False)
    alone = JobContext.read(JobClock(), Stops())
    assert not alone.multirun and alone.sweep is None and alone.slurm is None and alone.torchrun is None
    hydra_job(tmp_path, multirun=True, launcher="joblib")
    grid = JobContext.read(JobClock(), Stops())
    assert grid.sweep.parent_run_id == "p" * 32 and grid.trial is None and not grid.shares_process
    assert grid.in_pool
    monkeypatch.setenv(TRIAL_ENV, "3")  # a trial's number, but a study the sweep file keeps out (a password)
    assert JobContext.read(JobClock(), Stops()).trial is None


def test_a_job_in_a_process_started_for_it_begins_with_that_process_and_one_in_the_sweeps_own_when_handed_over():
    """The sweep's accounting (job_started, time_sweep_startup_s) counts a worker's imports as its
    first job's, as that job's time_total_s does; the basic launcher's jobs share the sweep's process,
    whose start is the command's."""
    clock = JobClock(handed=1000.0, began=990.0)  # a process's first job: its clock began with the process
    assert JobContext(multirun=True, in_pool=True, clock=clock).began == 990.0
    assert JobContext(multirun=True, clock=clock).began == 990.0  # a submitit or Slurm job's own process
    assert JobContext(multirun=True, shares_process=True, clock=clock).began == 1000.0
    assert JobContext(multirun=True, in_pool=True, clock=JobClock(handed=1000.0)).began == 1000.0  # a later job


def run_like(status: str, **tags) -> SimpleNamespace:
    return SimpleNamespace(
        info=SimpleNamespace(status=status, start_time=int(time.time() * 1000)), data=SimpleNamespace(tags=tags)
    )


def test_how_a_run_ended_is_one_word_written_and_read_back_alike():
    assert state_of(run_like("FINISHED")) is RunState.FINISHED
    assert state_of(run_like("KILLED")) is RunState.STOPPED
    assert state_of(run_like("KILLED", pruned_at_epoch="2")) is RunState.PRUNED
    assert state_of(run_like("FAILED")) is RunState.FAILED
    assert state_of(run_like("FAILED", failed_on="config")) is RunState.FAILED_ON_CONFIG
    fresh = {"mnist_cnn.heartbeat": "2999-01-01T00:00:00+00:00", "mnist_cnn.heartbeat_s": "30"}
    assert state_of(run_like("RUNNING", **fresh)) is RunState.RUNNING
    assert state_of(run_like("RUNNING", **{**fresh, "mnist_cnn.heartbeat": "2000-01-01T00:00:00+00:00"})) is (
        RunState.STALE
    )
    for state in (s for s in RunState if s is not RunState.STALE):  # what a writer sets reads back as itself
        tags = {"pruned_at_epoch": "1"} if state is RunState.PRUNED else {}
        tags |= {"failed_on": "config"} if state is RunState.FAILED_ON_CONFIG else {}
        tags |= fresh if state is RunState.RUNNING else {}
        assert state_of(run_like(mlflow_status(state), **tags)) is state


def test_a_restart_leaves_what_is_done_and_continues_what_was_stopped():
    sweep, requeue = Restart(Kind.SWEEP, "p"), Restart(Kind.REQUEUE, "123")
    for restart in (sweep, requeue):
        assert restart.leaves(RunState.FINISHED) and restart.leaves(RunState.PRUNED)
        assert restart.leaves(RunState.FAILED_ON_CONFIG)  # the same config would fail again
        assert not restart.leaves(RunState.STOPPED) and not restart.leaves(RunState.STALE)
    assert sweep.leaves(RunState.FAILED) and not requeue.leaves(RunState.FAILED)  # a requeue tries it again


def test_what_restarts_a_job_is_resolved_from_its_config_and_context(tiny_cfg):
    assert Restart.of(tiny_cfg(), JobContext()) is None
    assert Restart.of(tiny_cfg("resume=0123456789abcdef0123456789abcdef"), JobContext()).kind is Kind.RESUME
    assert Restart.of(tiny_cfg("resume_sweep=p"), JobContext()) == Restart(Kind.SWEEP, "p")
    assert Restart.of(tiny_cfg(), JobContext(slurm=SlurmJob("123", 1))) == Restart(Kind.REQUEUE, "123")
    assert Restart.of(tiny_cfg(), JobContext(slurm=SlurmJob("123", 0))) is None  # its first start
    assert Restart.of(tiny_cfg("tracking.enabled=false"), JobContext(slurm=SlurmJob("123", 1))) is None


def test_a_sweep_job_that_fails_on_its_config_gets_one_failed_run_and_the_sweep_goes_on(tiny_cfg, store_uri, tmp_path):
    client = MlflowClient(store_uri)
    parent = client.create_run(client.create_experiment("mnist-sweep")).info.run_id
    ctx = JobContext(overrides=("model.layers.0.kernel_size=99",), multirun=True, sweep=SweepFile(parent, ()))
    outcome = train.run(tiny_cfg("model.layers.0.kernel_size=99"), tmp_path / "out", ctx)
    assert outcome.metrics == {} and outcome.values(["val_acc"]) is None  # the sweeper fails its trial
    (failed,) = [r for r in all_runs(store_uri) if r.data.tags.get("mlflow.parentRunId") == parent]
    assert state_of(failed) is RunState.FAILED_ON_CONFIG and "kernel_size" in failed.data.tags["error"]
    assert failed.data.tags["config_sha256"] and failed.data.tags["hydra_overrides"] == "model.layers.0.kernel_size=99"


def test_a_run_and_the_commands_neither_read_nor_set_mlflows_global_tracking_uri(tiny_cfg, store_uri, tmp_path):
    """The run's model is logged and registered, and the commands load it, through the store's own
    client: the process's global tracking URI (here a store that does not exist) is neither used
    nor changed."""
    elsewhere = f"sqlite:///{tmp_path / 'not-this-one.db'}"
    mlflow.set_tracking_uri(elsewhere)
    try:
        run_id = train.run(tiny_cfg("tracking.register_as=tiny"), tmp_path / "out").run_id
        client = store.connect(store_uri)
        for spec in (run_id, "models:/tiny/1", "models:/tiny/latest"):
            assert load_model(client, spec).classes == tuple("0123456789"), spec
        assert mlflow.get_tracking_uri() == elsewhere and not (tmp_path / "not-this-one.db").exists()
    finally:
        mlflow.set_tracking_uri(store_uri)


def test_a_final_status_for_a_server_that_is_gone_is_not_waited_for(caplog):
    start = time.perf_counter()
    end_run(MlflowClient("http://127.0.0.1:9"), "0" * 32, RunState.STOPPED, {"interrupted": "yes"})
    assert time.perf_counter() - start < 5
    assert "could not mark run 00000000000000000000000000000000 STOPPED (connection refused)" in caplog.text


def test_a_sweeps_job_trains_on_its_share_of_the_cores():
    sweep = SweepFile("p", (), side_by_side=2)
    assert JobContext(multirun=True, sweep=sweep, cpus=8).torch_threads == 4
    assert JobContext(multirun=True, sweep=sweep, cpus=8, threads_given=3).torch_threads == 3  # joblib's share wins
    assert JobContext(multirun=True, sweep=SweepFile("p", (), side_by_side=4), cpus=2).torch_threads == 1
    assert JobContext(cpus=6).torch_threads == 6  # a job alone: all it may run on


def test_jobs_side_by_side_take_the_gpus_round_robin():
    sweep = SweepFile("p", (), side_by_side=4)
    assert [JobContext(multirun=True, sweep=sweep, number=n).gpu(2) for n in range(4)] == [0, 1, 0, 1]  # 2 share each
    assert [JobContext(multirun=True, sweep=sweep, number=n).gpu(8) for n in range(4)] == [0, 1, 2, 3]
    assert JobContext(multirun=True, sweep=sweep, number=3).gpu(1) is None  # one GPU: torch's choice
    assert JobContext(multirun=True, sweep=SweepFile("p", ()), number=3).gpu(4) is None  # one job at a time
    assert JobContext(number=3).gpu(4) is None  # a job alone


@pytest.mark.parametrize(
    "overrides, grid, expected",
    [
        ([], ["seed=1,2,3,4"], 1),  # the basic launcher: one after another
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["seed=1,2,3,4"], 2),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], ["seed=1,2,3,4"], len(os.sched_getaffinity(0))),
        (["hydra/launcher=submitit_local"], ["seed=1,2,3", "optimizer.lr=0.1,0.2"], 6),  # the whole grid at once
        (["hydra/launcher=submitit_local", "hparams_search=lr_batch", "hydra.sweeper.n_jobs=3"], [], 3),
        (["hydra/launcher=slurm"], ["seed=1,2,3,4"], 1),  # an allocation each
    ],
)
def test_how_many_jobs_of_a_sweep_share_a_machine(overrides, grid, expected):
    tree.register()
    with initialize_config_dir(config_dir=str(tree.CONF_DIR), version_base="1.3"):
        config = compose(tree.CONFIG_NAME, overrides, return_hydra_config=True)
    with open_dict(config):
        config.hydra.overrides.task = grid
    assert side_by_side(config) == expected
