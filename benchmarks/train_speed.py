"""Training speed: the tutorial's own loop against mnist_cnn's, side by side in one process.

    python benchmarks/train_speed.py [--steps 200] [--data-root ../shared/data] [--precision 32|bf16]
    python benchmarks/train_speed.py --tracking-overhead [--steps 200]

(a) is the tutorial exactly as written (shared/reference/tutorial.md): torchvision's MNIST with
`transforms.ToTensor()`, `DataLoader(batch_size=100, shuffle=True, drop_last=True)`, fp32, its CNN
class, Adam 1e-3. (b) is `mnist_cnn.engine.loop.train_epoch` on the same network (experiment=seed_tutorial),
same batch size and data, with the trainer's defaults for this machine (precision, channels_last).
Both run the same number of steps after a warm-up; the script prints steps/s of each and b/a.

--tracking-overhead instead trains experiment=seed_tutorial for 3 epochs of --steps batches, in turn
with MLflow tracking (a fresh sqlite store) and with tracking.enabled=false, twice each, and prints
the training-loop times (`train_time_s`: epochs with validation, checkpoints and logging) and the
overhead of tracking.
"""

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from mnist_cnn.cli.train import CONF_DIR
from mnist_cnn.engine import loop, optim, train

WARMUP = 10


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


def tutorial_steps_per_s(data_root: Path, steps: int) -> float:
    """torchvision's MNIST reads plain IDX files, so decompress the .gz copies into a temp folder."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in (data_root / "MNIST" / "raw").glob("*.gz"):
            with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        torch.manual_seed(777)
        mnist_train = datasets.MNIST(tmp, train=True, transform=transforms.ToTensor(), download=False)
        loader = DataLoader(mnist_train, batch_size=100, shuffle=True, drop_last=True)
        model = TutorialCNN()
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
        batches = iter(loader)
        for i in range(WARMUP + steps):
            if i == WARMUP:
                start = time.perf_counter()
            x, y = next(batches)
            optimizer.zero_grad()
            cost = criterion(model(x), y)
            cost.backward()
            optimizer.step()
        return steps / (time.perf_counter() - start)


def mnist_cnn_steps_per_s(data_root: Path, steps: int, precision: str) -> tuple:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = ["experiment=seed_tutorial", f"data.root={data_root}", "trainer.progress=false", "tracking.enabled=false"]
        overrides += [f"trainer.precision={precision}"] if precision else []
        cfg = compose(config_name="config", overrides=overrides)
    model, splits, *_ = train.prepare(cfg)
    optimizer = optim.build_optimizer(cfg.optimizer, model.parameters())
    generator = torch.Generator().manual_seed(cfg.seed)
    cfg.trainer.limit_batches = WARMUP
    loop.train_epoch(model, splits["train"], cfg, optimizer, None, generator, 0)
    cfg.trainer.limit_batches = steps
    start = time.perf_counter()
    loop.train_epoch(model, splits["train"], cfg, optimizer, None, generator, 1)
    return steps / (time.perf_counter() - start), cfg.trainer.precision, cfg.trainer.channels_last


def tracking_overhead(data_root: Path, steps: int) -> None:
    times = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(2):
            for tracked in (True, False):
                with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                    cfg = compose(config_name="config", overrides=[
                        "experiment=seed_tutorial", f"data.root={data_root}", "trainer.progress=false", "trainer.epochs=3",
                        f"trainer.limit_batches={steps}", f"tracking.enabled={tracked}", "tracking.log_model=false",
                        f"tracking.uri=sqlite:///{tmp}/mlflow{repeat}.db", f"tracking.run_name=overhead{repeat}",
                    ])
                times[tracked].append(train.run(cfg, Path(tmp) / f"out{repeat}{tracked}")["train_time_s"])
    on, off = min(times[True]), min(times[False])
    print(f"train_time_s with tracking: {', '.join(f'{t:.2f}' for t in times[True])}; without: {', '.join(f'{t:.2f}' for t in times[False])}")
    print(f"tracking overhead (best of 2 each): {100 * (on - off) / off:+.1f}% of training time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--data-root", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="for (b); default: the trainer's choice for this machine")
    parser.add_argument("--tracking-overhead", action="store_true", help="measure MLflow tracking against none")
    args = parser.parse_args()
    if args.tracking_overhead:
        return tracking_overhead(args.data_root, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"cuda {torch.cuda.is_available()}; {args.steps} steps of batch 100 after {WARMUP} warm-up steps")
    a = tutorial_steps_per_s(args.data_root, args.steps)
    print(f"(a) tutorial loop (ToTensor DataLoader, fp32):        {a:6.2f} steps/s  {1000 / a:6.1f} ms/step")
    b, precision, channels_last = mnist_cnn_steps_per_s(args.data_root, args.steps, args.precision)
    print(f"(b) mnist_cnn loop (precision {precision}, channels_last {channels_last}): {b:6.2f} steps/s  {1000 / b:6.1f} ms/step")
    print(f"ratio b/a: {b / a:.2f}")


if __name__ == "__main__":
    main()
