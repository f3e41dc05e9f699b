"""An Optuna search keeps `n_jobs` trials in flight with a launcher that runs jobs side by side: a
trial starts as soon as a worker frees, not when the slowest job of a batch ends. Stand-in jobs of
known lengths show it without training anything."""

import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.utils import get_class
from mlflow import MlflowClient
from omegaconf import DictConfig

from mnist_cnn.config import tree
from mnist_cnn.config.job import TRIAL_ENV
from mnist_cnn.config.search import study_of as study_of_config
from mnist_cnn.runner.outcome import Outcome
from mnist_cnn.sweep.search import Search, run_search, search_space, side_by_side
from mnist_cnn.sweep.study import open_storage
from tests.helpers import processes
from tests.helpers.searches import children, stop_with_sigterm, study_of, sweep_config

LENGTHS = "seconds=choice(0.3,1.2)"  # each trial's job lasts this long
SEEDS = "seed=choice(1,2,3)"


class StandIn:
    """A launcher whose jobs sleep for their trial's `seconds`, all of one launch side by side (as
    joblib's workers run a batch); it records, for each job, the slot that launched it, its
    launch's number, and when it started and ended. With `stopped`, the job that ends that many-th
    hands back a stop (as a job in a worker does after Ctrl-C or SIGTERM)."""

    def __init__(self, stopped: Optional[int] = None):
        self.jobs: List[Tuple[str, int, float, float, float]] = []  # (slot, launch, seconds, start, end)
        self.lock, self.launches, self.stopped = threading.Lock(), 0, stopped

    def launch(self, job_overrides, initial_job_idx):
        slot, returns = threading.current_thread().name, []
        with self.lock:
            self.launches += 1
            launch = self.launches

        def job(overrides):
            seconds = float(next(o for o in overrides if o.startswith("seconds=")).partition("=")[2])
            start = time.perf_counter()
            time.sleep(seconds)
            with self.lock:
                self.jobs.append((slot, launch, seconds, start, time.perf_counter()))
                stop = len(self.jobs) == self.stopped
            outcome = Outcome({}, stopped=True) if stop else Outcome({"val_acc": 1 - seconds / 10})
            returned = JobReturn()
            returned.status, returned.return_value = JobStatus.COMPLETED, outcome
            returns.append(returned)

        workers = [threading.Thread(target=job, args=(overrides,)) for overrides in job_overrides]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return returns


def searched(tmp_path, asynchronous: bool, launcher: Optional[StandIn] = None) -> StandIn:
    """A 6-trial grid over seconds x seed, 2 in flight, untracked (its study in the sweep folder)."""
    config = search_config(tmp_path, asynchronous)
    launcher = launcher or StandIn()
    run_search(config, launcher, [LENGTHS, SEEDS], parent=None)
    return launcher


def search_config(tmp_path, asynchronous: bool, sampler: str = "grid", n_trials: int = 6) -> DictConfig:
    return sweep_config(
        tmp_path / f"asynchronous-{asynchronous}",
        "hydra/sweeper=optuna",
        f"hydra/sweeper/sampler={sampler}",
        "hydra.sweeper.sampler.seed=0",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.asynchronous={str(asynchronous).lower()}",
        "tracking.enabled=false",
    )


def gaps(jobs) -> List[float]:
    """The seconds between each job's end and the start of the next job its slot launched."""
    by_slot: Dict[str, list] = {}
    for slot, _, _, start, end in sorted(jobs, key=lambda job: job[3]):
        by_slot.setdefault(slot, []).append((start, end))
    return [b[0] - a[1] for runs in by_slot.values() for a, b in zip(runs, runs[1:])]


def test_a_freed_worker_starts_the_next_trial_within_a_second(tmp_path):
    launcher = searched(tmp_path, asynchronous=True)
    assert sorted(job[2] for job in launcher.jobs) == [0.3] * 3 + [1.2] * 3  # each trial once
    waits = gaps(launcher.jobs)
    assert len(waits) == 4 and max(waits) < 1.0, waits  # 6 jobs on 2 slots: 4 handovers, none waits for the other


def test_in_batches_a_batch_starts_once_the_slowest_job_of_the_one_before_ended(tmp_path):
    """hydra.sweeper.asynchronous=false, as every search ran before: what the benchmark compares."""
    launcher = searched(tmp_path, asynchronous=False)
    assert sorted(job[2] for job in launcher.jobs) == [0.3] * 3 + [1.2] * 3
    batches = [[job for job in launcher.jobs if job[1] == n] for n in (1, 2, 3)]
    assert [len(batch) for batch in batches] == [2, 2, 2]
    for before, after in zip(batches, batches[1:]):
        assert min(job[3] for job in after) >= max(job[4] for job in before)


def test_a_cmaes_search_draws_its_trials_with_the_cmaes_package(tmp_path):
    """hydra/sweeper/sampler=cmaes (documented) needs the cmaes package from its second trial on
    (its first is drawn at random): without it, the search died there with `No module named 'cmaes'`."""
    config = search_config(tmp_path, asynchronous=True, sampler="cmaes", n_trials=4)
    launcher = StandIn()
    run_search(config, launcher, ["seconds=interval(0.01, 0.05)", "x=interval(0.0, 1.0)"], parent=None)
    where = study_of_config(config, None)
    study = optuna.load_study(study_name=where.name, storage=open_storage(where.storage, create=False))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4 and len(launcher.jobs) == 4
    assert "cmaes" in sys.modules  # Optuna's CMA-ES drew the trials after the first


@pytest.mark.parametrize("asynchronous", [True, False])
def test_a_job_that_hands_back_a_stop_stops_the_search_and_its_trial_stays_running(tmp_path, asynchronous):
    """The first job to end was stopped: the search raises KeyboardInterrupt (the command exits 130)
    once the job in flight beside it has ended and been told; no trial starts after the stop, and
    the stopped one stays RUNNING for resume_sweep= to ask again."""
    launcher = StandIn(stopped=1)
    with pytest.raises(KeyboardInterrupt, match="was stopped"):
        searched(tmp_path, asynchronous, launcher)
    assert len(launcher.jobs) == 2  # the stopped job and the one beside it: nothing after
    where = study_of_config(search_config(tmp_path, asynchronous), None)
    study = optuna.load_study(study_name=where.name, storage=open_storage(where.storage, create=False))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "RUNNING"]


@pytest.mark.parametrize("launcher, side", [("basic", False), ("joblib", True), ("submitit_local", True)])
def test_only_a_launcher_that_runs_jobs_side_by_side_keeps_them_in_flight(launcher, side):
    tree.register()
    with initialize_config_dir(config_dir=str(tree.CONF_DIR), version_base="1.3"):
        config = compose(tree.CONFIG_NAME, [f"hydra/launcher={launcher}"], return_hydra_config=True)
    cls = get_class(config.hydra.launcher._target_)
    assert side_by_side(cls.__new__(cls)) is side


@pytest.mark.slow
def test_an_asynchronous_search_stopped_with_trials_in_flight_resumes_to_each_trial_once_and_one_champion(
    tiny_root, store_uri, tmp_path
):
    """A 6-point grid on 2 joblib workers, stopped by SIGTERM to the launching process once 2 jobs
    finished: the stop reaches the job in flight (its run STOPPED with its resume command) within
    seconds, the parent STOPPED with its own; `resume_sweep=` trains each grid point once, in 6
    runs, and registers one champion."""
    search = (
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.sampler.seed=0",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=6",
        "trainer.limit_batches=choice(2,12)",
        "seed=choice(1,2,3)",
        "trainer.epochs=40",
        "tracking.register_as=digits",
    )
    output = stop_with_sigterm(
        processes.train_command(tiny_root, store_uri, *search, multirun=True), tmp_path, store_uri, 2
    )
    assert "SIGTERM passed on to" in output, output[-3000:]
    parent, before = children(store_uri)
    assert parent.info.status == "KILLED" and parent.data.tags["resume_command"].startswith(
        "mnist-cnn-train -m resume_sweep="
    )
    stopped = [r for r in before if r.info.status == "KILLED"]
    assert stopped and all(r.data.tags["resume_command"] for r in stopped), output[-3000:]  # trials were in flight
    out = processes.run(
        [*processes.TRAIN, "-m", f"resume_sweep={parent.info.run_id}", f"tracking.uri={store_uri}"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    parent, after = children(store_uri)
    points = sorted((r.data.params["trainer.limit_batches"], r.data.params["seed"]) for r in after)
    assert points == [(b, s) for b in ("12", "2") for s in ("1", "2", "3")], points  # each grid point once, in a run
    assert {r.info.status for r in after} == {"FINISHED"} and {r.info.run_id for r in stopped} <= {
        r.info.run_id for r in after
    }
    counted = [t for t in study_of(parent, tmp_path).trials if not t.user_attrs.get("asked_again")]
    assert len(counted) == 6 and {t.state for t in counted} == {optuna.trial.TrialState.COMPLETE}
    assert [int(v.version) for v in MlflowClient(store_uri).search_model_versions("name = 'digits'")] == [1]
    assert parent.data.tags["champion"] == "models:/digits/1"


def test_a_trials_job_is_told_its_trial_without_showing_it_in_the_launch_line(tmp_path):
    """Hydra's launchers print each job's overrides but `hydra.` ones: `++hydra.job.env_set...=0`
    was shown to the user; the override now sets a variable config.yaml declares, without `++`."""
    config = search_config(tmp_path, asynchronous=True)
    space, fixed = search_space({}, [LENGTHS, SEEDS])
    job = Search(optuna.create_study(), space, fixed, 6, None, ["val_acc"]).ask()
    assert filter_overrides(job.overrides) == [
        f"seconds={job.trial.params['seconds']}",
        f"seed={job.trial.params['seed']}",
    ]
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(tree.CONF_DIR)))
    told = loader.load_sweep_config(config, job.overrides[-1:])  # (seconds: a stand-in job's key, not the config's)
    assert told.hydra.job.env_set[TRIAL_ENV] == "0"
