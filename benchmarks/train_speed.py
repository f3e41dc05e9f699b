"""Training speed: the tutorial's own loop against mnist_cnn's, side by side in one process.

    python benchmarks/train_speed.py [--steps 100] [--rounds 5] [--data-root DIR] [--precision fp32|bf16] [--compile]
    python benchmarks/train_speed.py --fast99 [--seeds 1 2 3] [--precision fp32|bf16] [--experiment fast99_gpu]
                                     [--tutorial-max-epochs 15]
    python benchmarks/train_speed.py --profile [--steps 100] [--precision fp32|bf16]
    python benchmarks/train_speed.py --tracking-overhead [--steps 200]

(a) is the tutorial exactly as written ("PyTorch로 시작하는 딥 러닝 입문", 08-02 "CNN으로 MNIST 분류하기"):
torchvision's MNIST with `transforms.ToTensor()`, `DataLoader(batch_size=100, shuffle=True,
drop_last=True)`, fp32, its CNN class, Adam 1e-3. (b) is `mnist_cnn.engine.loop.train_epoch` on the
same network (experiment=seed_tutorial), same batch size and data: once in fp32, and once more with
the trainer's own choice of precision when that is not fp32 (`trainer.precision: null` measures fp32
against bf16 for this net, as a run does); with --compile each mnist_cnn loop also under
torch.compile. The loops take turns, `--rounds` times `--steps` steps each, so a noisy machine slows
both alike; the script prints each loop's median ms/step and the median of the rounds' ratios b/a.

DIR holds MNIST/raw; by default data.root's own default, $MNIST_CNN_DATA_DIR, else ./data.

--fast99 first measures the tutorial loop's time to 99%: it trains (a) epoch by epoch on the device
the benchmark runs on, scores the 10,000 test images after each epoch (scaled to [0, 1] as ToTensor
scales the training images), and stops at 99.0% test accuracy or after --tutorial-max-epochs epochs
(15; 0 skips the tutorial loop). It prints each epoch's time and accuracy, then the epochs to 99% and
their summed training time (the scoring not counted), or that it did not reach 99% and the time of
all its epochs. Then it trains experiment=fast99 (or --experiment) once per seed, each run tracked in
a fresh sqlite store as a user's would be, and prints its `train_time_s` and test accuracy, then the
median time, the mean accuracy, and the tutorial loop's time to 99% over that median ("more than"
when the tutorial loop did not reach 99%: its time is then a lower bound).

--profile runs mnist_cnn's loop under torch.profiler and prints the operators that took the most
time (self CPU time, and CUDA time on a GPU).

--tracking-overhead instead trains experiment=seed_tutorial for 3 epochs of --steps batches, in turn
with MLflow tracking (a fresh sqlite store) and with tracking.enabled=false, twice each, and prints
the training-loop times (`train_time_s`, epochs with validation, plus `time_checkpoint_s`, the
checkpoints and their logging) and the overhead of tracking.
"""

import argparse
import dataclasses
import gzip
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mlflow import MlflowClient
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from mnist_cnn.config import tree
from mnist_cnn.config.job import JobContext
from mnist_cnn.config.paths import default_data_root
from mnist_cnn.engine import loop
from mnist_cnn.engine import precision as precision_choice
from mnist_cnn.engine.distributed import SINGLE
from mnist_cnn.engine.state import TrainingState
from mnist_cnn.names import PRECISION
from mnist_cnn.runner import setup, train

WARMUP = 10
STEPS_PER_EPOCH = 600  # 60,000 images in batches of 100, drop_last
TARGET = 0.99  # the test accuracy that "time to 99%" means


class TutorialCNN(nn.Module):
    """The tutorial's network, written as the tutorial writes it."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.layer2 = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.fc = nn.Linear(7 * 7 * 64, 10, bias=True)
        nn.init.xavier_uniform_(self.fc.weight)

    def forward(self, x):
        out = self.layer2(self.layer1(x))
        return self.fc(out.view(out.size(0), -1))


class TutorialLoop:
    """The tutorial's training loop over torchvision's MNIST in `raw_dir`'s parent, on cuda when
    available as the tutorial does. Calling it with n trains n more batches (a new epoch's
    DataLoader when one runs out); `test_acc()` scores the test set."""

    def __init__(self, raw_dir: Path):
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(777)
        if self.device == "cuda":
            torch.cuda.manual_seed_all(777)
        mnist_train = datasets.MNIST(raw_dir.parents[1], train=True, transform=transforms.ToTensor(), download=False)
        self.mnist_test = datasets.MNIST(raw_dir.parents[1], train=False, download=False)
        self.loader = DataLoader(mnist_train, batch_size=100, shuffle=True, drop_last=True)
        self.model = TutorialCNN().to(self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=0.001)
        self.batches = iter(self.loader)

    def __call__(self, n: int) -> None:
        for _ in range(n):
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.batches = iter(self.loader)
                x, y = next(self.batches)
            x, y = x.to(self.device), y.to(self.device)
            self.optimizer.zero_grad()
            cost = self.criterion(self.model(x), y)
            cost.backward()
            self.optimizer.step()

    def test_acc(self) -> float:
        """Accuracy on the 10,000 test images, scaled to [0, 1] as ToTensor scales the training images."""
        images = self.mnist_test.data.unsqueeze(1)
        labels = self.mnist_test.targets.to(self.device)
        self.model.eval()
        with torch.no_grad():
            predicted = torch.cat(
                [
                    self.model(images[i : i + 1000].to(self.device).float().div(255)).argmax(1)
                    for i in range(0, len(images), 1000)
                ]
            )
        self.model.train()
        return (predicted == labels).float().mean().item()


def tutorial_to_99(raw_dir: Path, max_epochs: int) -> Tuple[Optional[int], float]:
    """Trains the tutorial loop one epoch at a time, scoring the test set after each, until TARGET or
    `max_epochs`; returns the epochs to TARGET (None if not reached) and the seconds of training of
    the epochs run (the scoring not counted)."""
    tutorial = TutorialLoop(raw_dir)
    seconds = 0.0
    for epoch in range(1, max_epochs + 1):
        took = _timed(tutorial, STEPS_PER_EPOCH) * STEPS_PER_EPOCH
        seconds += took
        acc = tutorial.test_acc()
        print(f"(a) tutorial loop: epoch {epoch:2d} {took:5.1f} s, test_acc {acc:.4f}", flush=True)
        if acc >= TARGET:
            print(
                f"(a) tutorial loop: {TARGET:.1%} test accuracy after {_epochs(epoch)}, {seconds:.1f} s of training "
                "(scoring not counted)"
            )
            return epoch, seconds
    print(
        f"(a) tutorial loop: did not reach {TARGET:.1%} test accuracy in {_epochs(max_epochs)}: {seconds:.1f} s of "
        "training (scoring not counted)"
    )
    return None, seconds


def mnist_cnn_loop(data_root: Path, precision: str, compiled: bool = False) -> Callable[[int], None]:
    """mnist_cnn's loop on the tutorial's net and batch in `precision` (with `compiled`, the model
    under torch.compile, as trainer.compile=true runs it); returns `steps(n)`."""
    overrides = [
        "experiment=seed_tutorial",
        f"data.root={data_root}",
        "trainer.progress=false",
        "tracking.enabled=false",
    ]
    cfg = _compose(overrides + [f"trainer.precision={precision}"])
    cfg.trainer.compile = compiled
    job = JobContext()
    state, settings, _ = setup.build_state(cfg, job, setup.prepare(cfg, job, SINGLE), None, SINGLE)
    return loop_steps(state, settings)


def loop_steps(state: TrainingState, settings: loop.StepSettings) -> Callable[[int], None]:
    """`steps(n)`: n more batches of train_epoch on `state`, each call an epoch of n batches."""

    def steps(n: int) -> None:
        loop.train_epoch(state, dataclasses.replace(settings, limit_batches=n), 1)

    return steps


def compiled_loop(data_root: Path, precision: str) -> Callable[[int], None]:
    """mnist_cnn_loop under torch.compile, its compilation done and timed here (the first steps)."""
    run = mnist_cnn_loop(data_root, precision, compiled=True)
    start = time.perf_counter()
    run(2)  # the first step compiles the forward and backward graphs
    print(f"torch.compile ({precision}): first 2 steps {time.perf_counter() - start:.1f} s")
    return run


def trainers_choice(data_root: Path) -> str:
    """What `trainer.precision: null` picks for the tutorial's net and batch here, measured as a run does."""
    cfg = _compose(["experiment=seed_tutorial", f"data.root={data_root}", "tracking.enabled=false"])
    prepared = setup.prepare(cfg, JobContext(), SINGLE)
    choice = precision_choice.choose(None, prepared.model, cfg.data.batch_size, prepared.splits["train"].labels.device)
    print(f"trainer.precision null picks {choice.precision}: {choice.reason}")
    return choice.precision


def _trained_in(uri: str, run_name: str) -> str:
    """The precision run `run_name` trained in: its `precision` tag (trainer.precision resolved)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist")
    (run,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
    return run.data.tags[PRECISION]


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _compose(overrides: List[str]):
    return tree.compose(overrides)


def _timed(steps: Callable[[int], None], n: int) -> float:
    """Seconds per step of `steps(n)`; a GPU's queued work is waited for on both sides."""
    _sync()
    start = time.perf_counter()
    steps(n)
    _sync()
    return (time.perf_counter() - start) / n


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def side_by_side(loops: Dict[str, Callable[[int], None]], steps: int, rounds: int) -> Dict[str, List[float]]:
    """Seconds per step of each loop in each round; the loops take turns within a round. On a GPU the
    warm-up holds mnist_cnn's capture (its eager warm-up steps, the device synchronisation and the
    graph's instantiation): a run captures its step once and keeps it (engine.graphs), so the timed
    rounds are replays."""
    for run in loops.values():
        run(WARMUP)
    times = {name: [] for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            times[name].append(_timed(run, steps))
    return times


def speed(data_root: Path, raw_dir: Path, steps: int, rounds: int, precision: str, compiled: bool = False) -> None:
    tutorial = "(a) tutorial loop (ToTensor DataLoader), fp32"
    loops = {tutorial: TutorialLoop(raw_dir)}
    for wanted in [precision] if precision else dict.fromkeys(["fp32", trainers_choice(data_root)]):
        loops[f"(b) mnist_cnn loop, {wanted}"] = mnist_cnn_loop(data_root, wanted)
        if compiled:
            loops[f"(b) mnist_cnn loop, {wanted}, compiled"] = compiled_loop(data_root, wanted)
    print(f"{rounds} rounds of {steps} steps of batch 100 per loop, taking turns, after {WARMUP} warm-up steps")
    times = side_by_side(loops, steps, rounds)
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(times[tutorial], t))
        print(
            f"{name:40s} {1000 * statistics.median(t):6.1f} ms/step   ratio "
            f"{'b/a ' if name != tutorial else ''}{ratio:.2f}"
        )


def profile(data_root: Path, steps: int, precision: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    resolved = precision or trainers_choice(data_root)
    run = mnist_cnn_loop(data_root, resolved)
    run(WARMUP)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profiler(activities=activities) as prof:
        run(steps)
        _sync()
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"mnist_cnn loop, {resolved}, {steps} steps of batch 100:")
    print(prof.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=48))


def fast99(
    data_root: Path,
    raw_dir: Path,
    seeds: List[int],
    precision: str,
    experiment: str = "fast99",
    tutorial_max_epochs: int = 15,
) -> None:
    if tutorial_max_epochs:
        epochs, to99 = tutorial_to_99(raw_dir, tutorial_max_epochs)
    times, accs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            cfg = _compose(
                [
                    f"experiment={experiment}",
                    f"seed={seed}",
                    f"data.root={data_root}",
                    "trainer.progress=false",
                    f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                    f"tracking.run_name={experiment}_seed{seed}",
                    *([f"trainer.precision={precision}"] if precision else []),
                ]
            )
            metrics = train.run(cfg, Path(tmp) / f"seed{seed}").metrics
            times.append(metrics["train_time_s"])
            accs.append(metrics["test_acc"])
            print(
                f"(b) {experiment} seed {seed}: train_time_s {times[-1]:6.2f}  test_acc {accs[-1]:.4f}  (precision "
                f"{_trained_in(cfg.tracking.uri, cfg.tracking.run_name)})"
            )
    median = statistics.median(times)
    summary = f"{experiment}: median train_time_s {median:.2f}, mean test_acc {statistics.mean(accs):.4f}"
    if tutorial_max_epochs:
        bound = "" if epochs else "more than "
        summary += f", time to {TARGET:.0%} {bound}{to99 / median:.1f}x faster than the tutorial loop"
        if not epochs:
            summary += f" (it did not reach {TARGET:.1%} in {_epochs(tutorial_max_epochs)})"
    below = [f"seed {seed} {acc:.4f}" for seed, acc in zip(seeds, accs) if acc < TARGET]
    if below:
        summary += f"; below {TARGET:.1%}: {', '.join(below)}"
    print(summary)


def tracking_overhead(data_root: Path, steps: int) -> None:
    times = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(2):
            for tracked in (True, False):
                cfg = _compose(
                    [
                        "experiment=seed_tutorial",
                        f"data.root={data_root}",
                        "trainer.progress=false",
                        "trainer.epochs=3",
                        f"trainer.limit_batches={steps}",
                        f"tracking.enabled={tracked}",
                        "tracking.log_model=false",
                        f"tracking.uri=sqlite:///{tmp}/mlflow{repeat}.db",
                        f"tracking.run_name=overhead{repeat}",
                    ]
                )
                final = train.run(cfg, Path(tmp) / f"out{repeat}{tracked}").metrics
                times[tracked].append(final["train_time_s"] + final["time_checkpoint_s"])
    on, off = min(times[True]), min(times[False])
    print(
        f"train_time_s + time_checkpoint_s with tracking: {', '.join(f'{t:.2f}' for t in times[True])}; without: "
        f"{', '.join(f'{t:.2f}' for t in times[False])}"
    )
    print(f"tracking overhead (best of 2 each): {100 * (on - off) / off:+.1f}% of training time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--data-root", type=Path, default=Path(default_data_root()), help="holds MNIST/raw (default: %(default)s)"
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="for (b) and fast99; default: fp32 and the trainer's choice for this machine (fast99: the latter)",
    )
    parser.add_argument(
        "--fast99", action="store_true", help="time experiment=fast99 per seed against the tutorial's time to 99%%"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--experiment", default="fast99", help="with --fast99: the preset to time (fast99_gpu, best_gpu, ...)"
    )
    parser.add_argument(
        "--tutorial-max-epochs",
        type=int,
        default=15,
        help="with --fast99: the tutorial loop's epochs without 99%% before it stops; 0 skips it (default: 15)",
    )
    parser.add_argument("--profile", action="store_true", help="torch.profiler's top operators in mnist_cnn's loop")
    parser.add_argument("--tracking-overhead", action="store_true", help="measure MLflow tracking against none")
    parser.add_argument("--compile", action="store_true", help="also time each mnist_cnn loop under torch.compile")
    args = parser.parse_args()
    if args.tutorial_max_epochs < 0:
        parser.error("--tutorial-max-epochs must be 0 or more")
    if args.tracking_overhead:
        return tracking_overhead(args.data_root, args.steps)
    if args.profile:
        return profile(args.data_root, args.steps, args.precision)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, "
        f"cuda {torch.cuda.is_available()}"
    )
    with tempfile.TemporaryDirectory() as tmp:  # torchvision's MNIST reads plain IDX files: decompress the .gz copies
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in (args.data_root / "MNIST" / "raw").glob("*.gz"):
            with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        if args.fast99:
            return fast99(args.data_root, raw, args.seeds, args.precision, args.experiment, args.tutorial_max_epochs)
        speed(args.data_root, raw, args.steps, args.rounds, args.precision, args.compile)


if __name__ == "__main__":
    main()
