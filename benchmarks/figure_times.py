"""What drawing and saving a run's three figures costs, figure by figure, in one process:

    python benchmarks/figure_times.py [--repeats 9] [--classes 10]

The report is an untrained net's on MNIST's test set (every cell of the confusion matrix filled, as
in a 1-batch run; a trained net leaves most cells empty and costs less), with the 16 most
confident mistakes and a one-epoch history. Printed, as the median of --repeats: the confusion
matrix on a new frame (`report.figures.ConfusionFrame`: what a process's first run pays), on a
frame already used (each later run of the process: only the cells, numbers and title are drawn),
and the ratio of the two; the mistakes; the learning curves; and the three as a run draws them.
"""

import argparse
import statistics
import time
from typing import Callable, List

import numpy as np
import torch

from mnist_cnn.report import figures
from mnist_cnn.report.metrics import Mistake, Report

HISTORY = [{"train_loss": 2.2, "val_loss": 2.1, "train_acc": 0.12, "val_acc": 0.14}]


def untrained(classes: int, seed: int) -> Report:
    """A report like an untrained net's on 10,000 images: counts everywhere, a tenth right."""
    rng = np.random.default_rng(seed)
    confusion = torch.tensor(rng.integers(1, 200, (classes, classes)))
    mistakes = [Mistake(torch.randint(0, 256, (28, 28), dtype=torch.uint8), 1, 2, 0.3) for _ in range(16)]
    names = tuple(str(c) for c in range(classes))
    share = [0.1] * classes
    return Report(names, 2.3, 0.1, confusion, share, share, share, mistakes)


def median_ms(draw: Callable[[int], object], repeats: int) -> float:
    """The median milliseconds of `draw(k)` for k = 1..repeats (a new report each time), after one
    untimed call (matplotlib's font cache and imports)."""
    draw(0)
    seconds: List[float] = []
    for k in range(1, repeats + 1):
        start = time.perf_counter()
        draw(k)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    reports = [untrained(args.classes, k) for k in range(args.repeats + 1)]
    names = reports[0].classes
    used = figures.ConfusionFrame(names)
    new = median_ms(lambda k: figures.ConfusionFrame(names).png(reports[k]), args.repeats)
    again = median_ms(lambda k: used.png(reports[k]), args.repeats)
    print(f"drawing and saving a run's figures ({args.classes} classes, median of {args.repeats}):")
    print(f"  confusion matrix, new frame (a process's first run)   {new:6.1f} ms")
    print(f"  confusion matrix, frame used before (each later run)  {again:6.1f} ms   ratio {again / new:.2f}")
    mistakes = median_ms(lambda k: figures.png(figures.misclassified(reports[k])), args.repeats)
    curves = median_ms(lambda k: figures.png(figures.learning_curves(HISTORY)), args.repeats)
    three = median_ms(lambda k: figures.run_figures(reports[k], HISTORY), args.repeats)
    print(f"  most confident mistakes                               {mistakes:6.1f} ms")
    print(f"  learning curves                                       {curves:6.1f} ms")
    print(f"  all three, as a later run draws them                  {three:6.1f} ms")


if __name__ == "__main__":
    main()
