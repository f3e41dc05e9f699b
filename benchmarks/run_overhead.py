"""What a run costs beyond its work: whole `mnist-cnn-train` processes timed from outside, beside the
seconds each run logged for its phases (`time_<phase>_s`, mnist_cnn.timing).

    python benchmarks/run_overhead.py [--data-root DIR] [--repeats 3] [--jobs 10] [ARG=VALUE ...]
    python benchmarks/run_overhead.py --whole experiment=fast99_gpu     # part 1 only, for a whole run

1. A 1-batch run (`trainer.limit_batches=1 trainer.epochs=1`) tracked in a sqlite store: the first
   one creates the store, then the median wall time of --repeats more processes into it, and where
   the last one's time went. Then the same run with tracking.enabled=false.
2. A basic-launcher sweep of --jobs such runs (`-m seed=1,...,N`) against a sweep of one job,
   --repeats times each, in turns, each into a copy of a store created beforehand: the cost of each
   extra job is (wall(N) - wall(1)) / (N - 1) from the median walls, printed beside what each job
   spent training, validating and testing (train_time_s + time_test_s), and the difference: the
   overhead a job adds beyond its own work. (On a shared machine identical sweeps differ by
   seconds: three of 10 jobs took 24.4, 20.8 and 21.3 s in one run, so one sweep of each could move
   the estimate by a quarter of a second a job.)

DIR holds MNIST/raw; by default data.root's own default, $MNIST_CNN_DATA_DIR, else ./data.

Extra ARG=VALUE overrides go to every run (e.g. `trainer.device=cuda`). With --whole the runs are
not cut to one batch and only part 1 runs: the wall time of a whole `mnist-cnn-train ARGS`.
Everything runs in a temporary folder; nothing is left behind.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from mlflow import MlflowClient

from mnist_cnn.config.paths import default_data_root
from mnist_cnn.names import time_metric
from mnist_cnn.timing import PHASES
from mnist_cnn.tracking import store

ONE_BATCH = ["trainer.limit_batches=1", "trainer.epochs=1", "trainer.progress=false"]


def train(args: List[str], folder: Path) -> float:
    """Wall seconds of one `mnist-cnn-train ARGS` process run in `folder`; its output goes to a log there."""
    start = time.perf_counter()
    with open(folder / "train.log", "a") as log:
        done = subprocess.run(
            [sys.executable, "-m", "mnist_cnn", *args], cwd=folder, stdout=log, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        sys.exit(f"run_overhead: mnist-cnn-train {' '.join(args)} exited {done.returncode}; see {folder / 'train.log'}")
    return time.perf_counter() - start


def finished_runs(uri: str) -> List[Dict[str, float]]:
    """The metrics of every FINISHED run in the store that has a test accuracy (sweep parents have
    none), newest first."""
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [
        r.data.metrics
        for r in client.search_runs(experiments, "attributes.status = 'FINISHED'")
        if "test_acc" in r.data.metrics
    ]


def single_runs(common: List[str], repeats: int, tmp: Path) -> Tuple[List[float], Dict[str, float]]:
    """The wall times of 1 + `repeats` runs into one new store (the first creates it), and the metrics
    of the last."""
    folder = tmp / "single"
    folder.mkdir()
    uri = f"sqlite:///{folder}/mlflow.db"
    walls = [
        train([*common, f"tracking.uri={uri}", f"hydra.run.dir={folder}/out{r}"], folder) for r in range(1 + repeats)
    ]
    return walls, finished_runs(uri)[0]  # newest first


def sweep(common: List[str], jobs: int, folder: Path, template: Path) -> Tuple[float, List[Dict[str, float]]]:
    """A basic-launcher sweep of `jobs` seeds in `folder`, into a copy of the store `template`: its
    wall seconds and its jobs' metrics."""
    folder.mkdir()
    shutil.copy(template, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    seeds = ",".join(str(s) for s in range(1, jobs + 1))
    wall = train(["-m", *common, f"seed={seeds}", f"tracking.uri={uri}", f"hydra.sweep.dir={folder}/multirun"], folder)
    return wall, finished_runs(uri)


def per_job(common: List[str], jobs: int, repeats: int, tmp: Path) -> Tuple[float, float, List[float], List[float]]:
    """Each extra job's wall seconds in a basic sweep and its own work (see 2. above), with the walls
    of the `repeats` sweeps of 1 and of `jobs` jobs they come from."""
    template = tmp / "template.db"
    store.connect(f"sqlite:///{template}")  # the schema, migrated once: no sweep pays it
    ones, manys, runs = [], [], []
    for r in range(repeats):
        ones.append(sweep(common, 1, tmp / f"sweep1-{r}", template)[0])
        wall, logged = sweep(common, jobs, tmp / f"sweep{jobs}-{r}", template)
        manys.append(wall)
        runs += logged
    extra = (statistics.median(manys) - statistics.median(ones)) / (jobs - 1)
    return extra, statistics.mean(work(m) for m in runs), ones, manys


def walls(seconds: List[float]) -> str:
    """`7.41 s (median of 7.41, 7.79, 7.19)`"""
    return f"{statistics.median(seconds):.2f} s (median of {', '.join(f'{w:.2f}' for w in seconds)})"


def work(metrics: Dict[str, float]) -> float:
    """A job's own work: its training steps with validation, and the test pass."""
    return metrics["train_time_s"] + metrics[time_metric("test")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root", type=Path, default=Path(default_data_root()), help="holds MNIST/raw (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--whole", action="store_true", help="time whole runs of ARGS (not cut to one batch); no sweep")
    parser.add_argument("overrides", nargs="*", help="ARG=VALUE for every run")
    args = parser.parse_args()
    common = [f"data.root={args.data_root.absolute()}", *([] if args.whole else ONE_BATCH), *args.overrides]
    what = f"mnist-cnn-train {' '.join(args.overrides)}" if args.whole else "1-batch run"
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (first, *runs), logged = single_runs(common, args.repeats, tmp)
        print(f"{what}, tracked: wall {walls(runs)[:-1]}; the first, which created the store, {first:.2f} s)")
        print("  where the last one's time went: " + "  ".join(f"{p} {logged[time_metric(p)]:.2f}" for p in PHASES))
        print(f"  train_time_s {logged['train_time_s']:.2f}, test_acc {logged['test_acc']:.4f}")
        if args.whole:
            return
        untracked = [
            train([*common, "tracking.enabled=false", f"hydra.run.dir={tmp}/untracked{r}"], tmp)
            for r in range(args.repeats)
        ]
        print(f"1-batch run, tracking.enabled=false: wall {statistics.median(untracked):.2f} s")
        extra, own, ones, manys = per_job(common, args.jobs, args.repeats, tmp)
        print(f"sweep of {args.jobs} 1-batch jobs: wall {walls(manys)}; of 1 job: {walls(ones)}")
        print(
            f"  each extra job: {extra:.2f} s, of which its own work (train_time_s + time_test_s) {own:.2f} s: "
            f"{extra - own:.2f} s beyond it"
        )


if __name__ == "__main__":
    main()
