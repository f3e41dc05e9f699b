"""Training speed: the tutorial's own loop against mnist_cnn's, side by side in one process.

    python benchmarks/train_speed.py [--steps 100] [--rounds 5] [--data-root ../shared/data]
                                     [--precision fp32|bf16] [--compile]
    python benchmarks/train_speed.py --fast99 [--seeds 1 2 3] [--precision fp32|bf16] [--experiment fast99_gpu]
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

--fast99 trains experiment=fast99 once per seed, each run tracked in a fresh sqlite store as a user's
would be, and prints its `train_time_s` and test accuracy, then the median time, the mean accuracy,
and the ratio of the tutorial loop's time to 99% (its first TUTORIAL_EPOCHS_TO_99 epochs: one full
epoch timed in this run, times that many) to the median time.

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
from typing import Callable, Dict, List

import torch
from mlflow import MlflowClient
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from mnist_cnn.config import tree
from mnist_cnn.engine import loop
from mnist_cnn.engine import precision as precision_choice
from mnist_cnn.engine.distributed import SINGLE
from mnist_cnn.names import PRECISION
from mnist_cnn.runner import setup, train

WARMUP = 10
TUTORIAL_EPOCHS_TO_99 = (
    8  # this loop first reached 99.0% test accuracy after epoch 8 here (0.9902; issue 12 saw 9 elsewhere)
)
STEPS_PER_EPOCH = 600  # 60,000 images in batches of 100, drop_last


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


def tutorial_loop(raw_dir: Path) -> Callable[[int], None]:
    """The tutorial's training loop over torchvision's MNIST in `raw_dir`'s parent, on cuda when
    available as the tutorial does; returns `steps(n)`, which trains n more batches (a new epoch's
    DataLoader when one runs out)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(777)
    mnist_train = datasets.MNIST(raw_dir.parents[1], train=True, transform=transforms.ToTensor(), download=False)
    loader = DataLoader(mnist_train, batch_size=100, shuffle=True, drop_last=True)
    model = TutorialCNN().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    batches = iter(loader)

    def steps(n: int) -> None:
        nonlocal batches
        for _ in range(n):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            cost = criterion(model(x), y)
            cost.backward()
            optimizer.step()

    return steps


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
    state, settings, _ = setup.build_state(cfg, setup.prepare(cfg, SINGLE), None, SINGLE)

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
    prepared = setup.prepare(cfg, SINGLE)
    choice = precision_choice.choose(None, prepared.model, cfg.data.batch_size, prepared.splits["train"].labels.device)
    print(f"trainer.precision null picks {choice.precision}: {choice.reason}")
    return choice.precision


def _trained_in(uri: str, run_name: str) -> str:
    """The precision run `run_name` trained in: its `precision` tag (trainer.precision resolved)."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnist")
    (run,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
    return run.data.tags[PRECISION]


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
    """Seconds per step of each loop in each round; the loops take turns within a round."""
    for run in loops.values():
        run(WARMUP)
    times = {name: [] for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            times[name].append(_timed(run, steps))
    return times


def speed(data_root: Path, raw_dir: Path, steps: int, rounds: int, precision: str, compiled: bool = False) -> None:
    tutorial = "(a) tutorial loop (ToTensor DataLoader), fp32"
    loops = {tutorial: tutorial_loop(raw_dir)}
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


def fast99(data_root: Path, raw_dir: Path, seeds: List[int], precision: str, experiment: str = "fast99") -> None:
    epoch = _timed(tutorial_loop(raw_dir), STEPS_PER_EPOCH) * STEPS_PER_EPOCH
    to99 = epoch * TUTORIAL_EPOCHS_TO_99
    print(f"(a) tutorial loop: one epoch {epoch:.1f} s, so {TUTORIAL_EPOCHS_TO_99} epochs to 99%: {to99:.1f} s")
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
            metrics = train.run(cfg, Path(tmp) / f"seed{seed}")
            times.append(metrics["train_time_s"])
            accs.append(metrics["test_acc"])
            print(
                f"(b) {experiment} seed {seed}: train_time_s {times[-1]:6.2f}  test_acc {accs[-1]:.4f}  (precision "
                f"{_trained_in(cfg.tracking.uri, cfg.tracking.run_name)})"
            )
    median = statistics.median(times)
    print(
        f"{experiment}: median train_time_s {median:.2f}, mean test_acc {statistics.mean(accs):.4f}, "
        f"time to 99% {to99 / median:.1f}x faster than the tutorial loop"
    )


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
                final = train.run(cfg, Path(tmp) / f"out{repeat}{tracked}")
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
    parser.add_argument("--data-root", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
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
    parser.add_argument("--profile", action="store_true", help="torch.profiler's top operators in mnist_cnn's loop")
    parser.add_argument("--tracking-overhead", action="store_true", help="measure MLflow tracking against none")
    parser.add_argument("--compile", action="store_true", help="also time each mnist_cnn loop under torch.compile")
    args = parser.parse_args()
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
            return fast99(args.data_root, raw, args.seeds, args.precision, args.experiment)
        speed(args.data_root, raw, args.steps, args.rounds, args.precision, args.compile)


if __name__ == "__main__":
    main()
