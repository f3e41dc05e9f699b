"""What a job of mnist-cnn-train is, read once where the command starts it: its `JobContext`.

Besides its config, a job learns what it belongs to from three places: Hydra (its overrides,
whether it is one of a multirun's jobs and which launcher runs it, its folders), the environment
(its Optuna trial's number, Slurm's job id and restart count, torchrun's ranks) and the sweep file
the launching process wrote into the sweep folder before any job started (the sweep's parent run,
the swept keys, an Optuna search's study). This module is the only one that reads them, and only
the entry points call it (`JobContext.read` from mnist-cnn-train, `SweepFile.read` from the Optuna
sweeper): everything below receives the context. Outside Hydra (a test, a script calling
mnist_cnn.runner.train.run) `JobContext()` is a job alone: no overrides, no sweep, no torchrun.

A context also carries the two things its job owns from its first moment: its clock and its stop
requests (the only members that change, as the job runs).
"""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_cnn.config.paths import EXPERIMENT, EXPERIMENTS_SCHEME, ConfigFolder, find_config
from mnist_cnn.interrupts import Stops
from mnist_cnn.timing import JobClock

SWEEP_FILE = "mlflow_sweep.json"  # in the sweep folder: a SweepFile
TRIAL_ENV = "MNIST_CNN_OPTUNA_TRIAL"  # set in each job of an Optuna search (sweep.search): its trial's number


@dataclass(frozen=True)
class Study:
    """An Optuna study and where it is kept: an Optuna storage URL or a journal file."""

    name: str
    storage: str


@dataclass(frozen=True)
class SweepFile:
    """What the launching process of a tracked sweep writes for its jobs, once, before they start
    (sweep.callback)."""

    parent_run_id: str
    swept: Tuple[str, ...]  # the keys the sweep varies
    study: Optional[Study] = None  # an Optuna search's, where its jobs report their epochs; None for a grid, or
    # a storage whose URL holds a password, which the sweep folder must not (its jobs then prune from MLflow)
    side_by_side: int = 1  # how many of its jobs run at once on one machine: they share its cores and GPUs

    def write(self, folder: Path) -> None:
        (folder / SWEEP_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, folder: Path) -> Optional["SweepFile"]:
        """The sweep file in `folder`, or None (an untracked sweep writes none)."""
        path = folder / SWEEP_FILE
        if not path.is_file():
            return None
        found = json.loads(path.read_text())
        study = Study(**found["study"]) if found.get("study") else None
        return cls(found["parent_run_id"], tuple(found["swept"]), study, found.get("side_by_side", 1))


@dataclass(frozen=True)
class Trial:
    """The trial of an Optuna search whose values a job trains."""

    study: Study
    number: int


@dataclass(frozen=True)
class SlurmJob:
    job_id: str  # JOBID, or ARRAYJOBID_TASKID for an array task; a requeued job keeps it
    restarts: int  # how many times Slurm requeued it (preemption, timeout, `scontrol requeue`)


@dataclass(frozen=True)
class Torchrun:
    """This process's place among those torchrun started."""

    rank: int
    size: int
    local_rank: int  # which GPU on this machine


@dataclass(frozen=True)
class JobContext:
    overrides: Tuple[str, ...] = ()  # this job's command-line overrides (`optimizer.lr=0.003`, ...)
    multirun: bool = False  # one of a sweep's jobs (-m)
    shares_process: bool = False  # run in its sweep's own process, between its siblings (Hydra's basic launcher)
    in_pool: bool = False  # run by one of a pool's workers beside its siblings' (joblib's): an exception ends them all
    sweep: Optional[SweepFile] = None  # the tracked sweep it belongs to
    sweep_dir: Optional[Path] = None  # Hydra's folder of its sweep (hydra.sweep.dir)
    trial: Optional[Trial] = None  # its Optuna trial, when its study can be opened from here
    slurm: Optional[SlurmJob] = None
    torchrun: Optional[Torchrun] = None
    cwd: Path = field(default_factory=Path.cwd)  # where the command was started: relative paths mean this folder
    output_dir: Optional[Path] = None  # Hydra's folder for this job
    number: int = 0  # Hydra's number of the job in its sweep
    files: Dict[str, Path] = field(default_factory=dict)  # the file each group's option was read from, for messages
    cpus: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))  # what this process may run on
    threads_given: Optional[int] = None  # OMP_NUM_THREADS: a launcher's share for it (joblib's), or the user's
    # mnist-cnn-verify's rerun: the precision the verified run resolved (kept, as a resume keeps it,
    # the config unchanged: its fingerprint stays the run's), and a scratch folder that its end deletes
    precision: Optional[str] = None
    scratch: bool = False
    clock: JobClock = field(default_factory=JobClock)
    stops: Stops = field(default_factory=Stops)

    @classmethod
    def read(cls, clock: JobClock, stops: Stops) -> "JobContext":
        """The context of the job Hydra runs now in this process (mnist-cnn-train's task)."""
        hydra = HydraConfig.get()
        multirun = hydra.mode == RunMode.MULTIRUN
        sweep = SweepFile.read(Path(hydra.sweep.dir)) if multirun else None
        number = os.environ.get(TRIAL_ENV) or None  # config.yaml declares it empty
        launcher = str(hydra.launcher._target_).rsplit(".", 1)[-1] if multirun else None
        return cls(
            overrides=tuple(hydra.overrides.task),
            multirun=multirun,
            shares_process=launcher == "BasicLauncher",
            in_pool=launcher == "JoblibLauncher",
            sweep=sweep,
            sweep_dir=Path(hydra.sweep.dir) if multirun else None,
            trial=Trial(sweep.study, int(number)) if sweep and sweep.study and number is not None else None,
            slurm=_slurm_job(),
            torchrun=_torchrun(),
            cwd=Path(hydra.runtime.cwd),
            output_dir=Path(hydra.runtime.output_dir),
            number=int(hydra.job.num) if multirun else 0,
            files=_option_files(hydra),
            threads_given=int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None,
            clock=clock,
            stops=stops,
        )

    @property
    def began(self) -> float:
        """When this job began, in Unix seconds, as its sweep counts it (its `job_started` tag, from
        which the parent's time_sweep_startup_s and a benchmark's busy seconds are measured): in a
        process started for it (a joblib worker's first job, a submitit or Slurm job) with that
        process, which imports what the job runs, as its time_total_s counts; in the sweep's own
        process (the basic launcher) or a worker's later job, when Hydra handed it over."""
        return self.clock.handed if self.shares_process else self.clock.began

    @property
    def torch_threads(self) -> int:
        """The threads a sweep's job trains with: what its launcher gave it (OMP_NUM_THREADS), else
        its share of the CPUs it may run on (Slurm's allocation, taskset), split between the jobs
        that run side by side on this machine."""
        return self.threads_given or max(1, self.cpus // (self.sweep.side_by_side if self.sweep else 1))

    def gpu(self, count: int) -> Optional[int]:
        """Which of `count` GPUs a sweep's job takes when several of its jobs run side by side on
        this machine: round robin by job number (more jobs than GPUs share them); None: one job at
        a time, or one GPU (torch's own choice)."""
        side_by_side = self.sweep.side_by_side if self.sweep else 1
        return self.number % count if self.multirun and side_by_side > 1 and count > 1 else None


def _option_files(hydra: DictConfig) -> Dict[str, Path]:
    """The file of each option Hydra chose (`model` -> .../model/mine.yaml), in its search path's order."""
    groups = {"file": "", EXPERIMENTS_SCHEME: EXPERIMENT}  # the sources that read files, and the group each holds
    sources = hydra.runtime.config_sources
    folders = [ConfigFolder(Path(s.path), groups[s.schema]) for s in sources if s.schema in groups]
    chosen = {g: find_config(folders, f"{g}/{o}") for g, o in hydra.runtime.choices.items() if o and "hydra" not in g}
    return {group: path for group, path in chosen.items() if path is not None}


def _slurm_job() -> Optional[SlurmJob]:
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    elif "SLURM_JOB_ID" in env:
        job_id = env["SLURM_JOB_ID"]
    else:
        return None
    return SlurmJob(job_id, int(env.get("SLURM_RESTART_COUNT", "0") or 0))


def _torchrun() -> Optional[Torchrun]:
    env = os.environ
    if "WORLD_SIZE" not in env:
        return None
    return Torchrun(int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
