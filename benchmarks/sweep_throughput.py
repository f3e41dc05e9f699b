"""A sweep's worth is trials finished per hour: how busy its workers are, and what it pays outside
its jobs. Measured side by side, in one run, on this machine:

    python benchmarks/sweep_throughput.py [--data-root DIR] [--batches 30,600] [--seeds 3] [--jobs 10] [--repeats 3]
    python benchmarks/sweep_throughput.py --gpu          # part 4 alone (benchmarks/gpu_check.sh)

1. An Optuna search of 2 x --seeds trials (a grid over trainer.limit_batches and seed, one epoch
   each) on 2 joblib workers, `hydra.sweeper.asynchronous=false` (batches of 2, as every search ran
   before) against the default (a trial starts as soon as a worker frees): the wall time, the
   jobs' summed wall time (each from its start to its run's end: a worker's first job starts with
   the worker, whose imports it pays, as its time_total_s counts; JobContext.began), the occupancy
   (that sum over 2 x the wall time), and the sweep's two fixed costs its parent logged
   (`time_sweep_startup_s`, `time_sweep_report_s`).
2. The cost of each extra job of a basic-launcher sweep of --jobs 1-batch jobs beyond its own
   training and test pass (benchmarks/run_overhead.py measures it, from --repeats sweeps of each).
3. 4 seeds of `experiment=fast99` with the basic launcher (one job at a time, on all the cores)
   against 2 joblib workers (half the cores each: the `torch_threads` each run logged).
4. On a GPU, trials a minute of `experiment=fast99_gpu`, 4 seeds one at a time against 4 side by
   side on one GPU (joblib); without one, the line says it needs one.

Every sweep runs in a temporary folder, into a store created beforehand (its creation is not a
sweep's cost); nothing is left behind. DIR holds MNIST/raw (default: data.root's default).
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import run_overhead
import torch
from mlflow import MlflowClient

from mnist_cnn.config.paths import default_data_root
from mnist_cnn.names import ERROR, JOB_STARTED, PARENT_RUN, SWEEP_REPORT, SWEEP_STARTUP, TORCH_THREADS
from mnist_cnn.tracking import store

WORKERS = 2
SEARCH = [
    "hydra/sweeper=optuna",
    "hydra/sweeper/sampler=grid",
    "hydra.sweeper.sampler.seed=0",
    "hydra/launcher=joblib",
    f"hydra.launcher.n_jobs={WORKERS}",
    f"hydra.sweeper.n_jobs={WORKERS}",
    "trainer.epochs=1",
    "data.val_size=1000",
    "trainer.progress=false",
    "trainer.precision=fp32",
]  # the search issue 28 measured, as it was filed (models logged, the default)


def sweep(overrides: List[str], folder: Path, template: Path) -> Tuple[float, List, object]:
    """`mnist-cnn-train -m OVERRIDES` in `folder`, into a copy of the store `template`: its wall
    seconds, its jobs' runs and its parent run."""
    folder.mkdir()
    shutil.copy(template, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    command = [sys.executable, "-m", "mnist_cnn", "-m", *overrides, f"tracking.uri={uri}"]
    start = time.perf_counter()
    with open(folder / "sweep.log", "w") as log:
        done = subprocess.run(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep_throughput: {' '.join(command)} exited {done.returncode}; see {folder / 'sweep.log'}")
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if PARENT_RUN not in r.data.tags)
    jobs = [r for r in runs if r is not parent]
    failed = [
        f"{r.info.run_name} {r.info.status}: {r.data.tags.get(ERROR, '')}" for r in jobs if r.info.status != "FINISHED"
    ]
    if failed:  # a failed job's seconds are no measure of the sweep
        sys.exit(f"sweep_throughput: jobs of the sweep in {folder} did not finish:\n  " + "\n  ".join(failed))
    return wall, jobs, parent


def cpu_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what Python knows of it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.partition(":")[2].strip() for line in lines if line.startswith("model name")), "a CPU")


def busy(jobs: List) -> float:
    """The jobs' summed wall seconds: each from its start (its job_started tag) to its run's end."""
    return sum(job.info.end_time / 1000 - float(job.data.tags[JOB_STARTED]) for job in jobs)


def search(asynchronous: bool, common: List[str], batches: str, seeds: int, tmp: Path, template: Path) -> Dict:
    wall, jobs, parent = sweep(
        [
            *SEARCH,
            f"hydra.sweeper.n_trials={2 * seeds}",
            f"hydra.sweeper.asynchronous={str(asynchronous).lower()}",
            f"trainer.limit_batches=choice({batches})",
            f"seed=choice({','.join(str(s) for s in range(1, seeds + 1))})",
            *common,  # last: the caller's overrides win
        ],
        tmp / f"search-{'async' if asynchronous else 'blocking'}",
        template,
    )
    metrics = parent.data.metrics
    return {
        "wall": wall,
        "busy": busy(jobs),
        "occupancy": busy(jobs) / (WORKERS * wall),
        "startup": metrics[SWEEP_STARTUP],
        "report": metrics[SWEEP_REPORT],
        "trials": len(jobs),
    }


def searches(common: List[str], batches: str, seeds: int, tmp: Path, template: Path) -> None:
    print(
        f"{2 * seeds}-trial Optuna search (a grid over trainer.limit_batches {batches} x seeds 1-{seeds}, one epoch, "
        f"{WORKERS} joblib workers) on {os.cpu_count()} cores of {cpu_name()}:"
    )
    found = {}
    for asynchronous, label in ((False, "blocking (asynchronous=false)"), (True, "asynchronous")):
        r = found[asynchronous] = search(asynchronous, common, batches, seeds, tmp, template)
        print(
            f"  {label:30} wall {r['wall']:5.1f} s, jobs busy {r['busy']:5.1f} s, occupancy {r['occupancy']:.2f}, "
            f"startup {r['startup']:.1f} s, report {r['report']:.1f} s ({r['trials']} trials)"
        )
    a, b = found[True], found[False]
    print(
        f"  asynchronous / blocking: {a['wall'] / b['wall']:.2f}x the wall time, "
        f"occupancy {a['occupancy'] - b['occupancy']:+.2f}"
    )


def per_job(common: List[str], jobs: int, repeats: int, tmp: Path) -> None:
    extra, own, ones, manys = run_overhead.per_job([*common, *run_overhead.ONE_BATCH], jobs, repeats, tmp)
    print(
        f"basic-launcher sweep of {jobs} 1-batch jobs (median walls of {repeats} against {repeats} sweeps of 1): "
        f"each extra job {extra:.2f} s, of which its own training and test pass {own:.2f} s: "
        f"{extra - own:.2f} s beyond them"
    )


def cores(common: List[str], experiment: str, tmp: Path, template: Path) -> Dict[str, Tuple[float, set]]:
    """4 seeds of `experiment`, one job at a time and on 2 joblib workers: wall seconds and the
    torch_threads their runs logged."""
    found = {}
    for label, launch in (
        ("basic launcher", []),
        (f"joblib, {WORKERS} workers", ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={WORKERS}"]),
    ):
        wall, jobs, _ = sweep(
            [
                f"experiment={experiment}",
                "seed=1,2,3,4",
                "tracking.log_model=false",
                "trainer.progress=false",
                *launch,
                *common,
            ],
            tmp / f"{experiment}-{len(launch)}",
            template,
        )
        found[label] = (wall, {job.data.params[TORCH_THREADS] for job in jobs})
    return found


def gpu(common: List[str], tmp: Path, template: Path) -> None:
    """Trials a minute of experiment=fast99_gpu: 4 seeds one at a time, then 4 side by side on one GPU."""
    what = "GPU: trials a minute of experiment=fast99_gpu, 4 seeds one at a time against 4 side by side"
    if not torch.cuda.is_available():
        print(f"{what}: needs a CUDA GPU (torch sees none here)")
        return
    rates = []
    for launch in ([], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]):
        wall, _, _ = sweep(
            [
                "experiment=fast99_gpu",
                "seed=1,2,3,4",
                "trainer.device=cuda",
                "tracking.log_model=false",
                *launch,
                *common,
            ],
            tmp / f"gpu-{len(launch)}",
            template,
        )
        rates.append(4 / wall * 60)
    print(
        f"{what} on one {torch.cuda.get_device_name()}: {rates[0]:.1f} against {rates[1]:.1f} "
        f"({rates[1] / rates[0]:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path(default_data_root()), help="holds MNIST/raw")
    parser.add_argument("--batches", default="30,600", help="the search's trainer.limit_batches choices")
    parser.add_argument("--seeds", type=int, default=3, help="the search's seeds (2 x SEEDS trials)")
    parser.add_argument("--jobs", type=int, default=10, help="jobs of the basic-launcher sweep")
    parser.add_argument("--repeats", type=int, default=3, help="sweeps of --jobs and of 1 job, medians taken")
    parser.add_argument("--skip-cores", action="store_true", help="leave out the fast99 comparison (minutes)")
    parser.add_argument("--gpu", action="store_true", help="only the GPU's trials a minute (benchmarks/gpu_check.sh)")
    parser.add_argument("overrides", nargs="*", help="ARG=VALUE for every run (tiny data: data.val_size=100 ...)")
    args = parser.parse_args()
    common = [f"data.root={args.data_root.absolute()}", *args.overrides]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        template = tmp / "template.db"
        store.connect(f"sqlite:///{template}")  # the schema, migrated once: no sweep pays it
        if args.gpu:
            return gpu(common, tmp, template)
        searches(common, args.batches, args.seeds, tmp, template)
        per_job(common, args.jobs, args.repeats, tmp)
        if not args.skip_cores:
            found = cores(common, "fast99", tmp, template)
            (slow, fast) = sorted(found, key=lambda label: found[label][0], reverse=True)
            print(
                f"4 seeds of experiment=fast99 on {os.cpu_count()} cores: "
                + ", ".join(
                    f"{label} {wall:.1f} s (torch_threads {'/'.join(sorted(t))})" for label, (wall, t) in found.items()
                )
                + f": {fast} {found[slow][0] / found[fast][0]:.2f}x faster"
            )
        gpu(common, tmp, template)


if __name__ == "__main__":
    main()
