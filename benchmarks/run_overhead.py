"""What a run costs beyond its work: whole `mnist-cnn-train` processes timed from outside, beside the
seconds each run logged for its phases (`time_<phase>_s`, mnist_cnn.timing).

    python benchmarks/run_overhead.py [--data-root DIR] [--repeats 3] [--jobs 10] [ARG=VALUE ...]
    python benchmarks/run_overhead.py --whole experiment=fast99_gpu     # part 1 only, for a whole run

1. A 1-batch run (`trainer.limit_batches=1 trainer.epochs=1`) tracked in a sqlite store: the first
   one creates the store, then the median wall time of --repeats more processes into it, and where
   the last one's time went. Then the same run with tracking.enabled=false.
2. A basic-launcher sweep of --jobs such runs (`-m seed=1,...,N`) against a sweep of one job, each
   in a fresh store: the cost of each extra job is (wall(N) - wall(1)) / (N - 1), printed beside
   what each job spent training, validating and testing (train_time_s + time_test_s), and the
   difference: the overhead a job adds beyond its own work.

DIR holds MNIST/raw; by default data.root's own default, $MNIST_CNN_DATA_DIR, else ./data.

Extra ARG=VALUE overrides go to every run (e.g. `trainer.device=cuda`). With --whole the runs are
not cut to one batch and only part 1 runs: the wall time of a whole `mnist-cnn-train ARGS`.
Everything runs in a temporary folder; nothing is left behind.
"""

import argparse
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


def sweep(common: List[str], jobs: int, tmp: Path) -> Tuple[float, List[Dict[str, float]]]:
    folder = tmp / f"sweep{jobs}"
    folder.mkdir()
    uri = f"sqlite:///{folder}/mlflow.db"
    seeds = ",".join(str(s) for s in range(1, jobs + 1))
    wall = train(["-m", *common, f"seed={seeds}", f"tracking.uri={uri}", f"hydra.sweep.dir={folder}/multirun"], folder)
    return wall, finished_runs(uri)


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
        (first, *walls), logged = single_runs(common, args.repeats, tmp)
        print(
            f"{what}, tracked: wall {statistics.median(walls):.2f} s (median of "
            f"{', '.join(f'{w:.2f}' for w in walls)}; "
            f"the first, which created the store, {first:.2f} s)"
        )
        print("  where the last one's time went: " + "  ".join(f"{p} {logged[time_metric(p)]:.2f}" for p in PHASES))
        print(f"  train_time_s {logged['train_time_s']:.2f}, test_acc {logged['test_acc']:.4f}")
        if args.whole:
            return
        untracked = [
            train([*common, "tracking.enabled=false", f"hydra.run.dir={tmp}/untracked{r}"], tmp)
            for r in range(args.repeats)
        ]
        print(f"1-batch run, tracking.enabled=false: wall {statistics.median(untracked):.2f} s")
        one, _ = sweep(common, 1, tmp)
        many, jobs = sweep(common, args.jobs, tmp)
        extra = (many - one) / (args.jobs - 1)
        own = statistics.mean(work(m) for m in jobs)
        print(f"sweep of {args.jobs} 1-batch jobs: wall {many:.2f} s; of 1 job: {one:.2f} s")
        print(
            f"  each extra job: {extra:.2f} s, of which its own work (train_time_s + time_test_s) {own:.2f} s: "
            f"{extra - own:.2f} s beyond it"
        )


if __name__ == "__main__":
    main()
