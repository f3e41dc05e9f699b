"""What `trainer.deterministic=true` costs per training step, measured side by side in one process.

    python benchmarks/deterministic_cost.py [--batch-size 64] [--steps 20] [--rounds 4]

Alternates rounds with deterministic algorithms off and on (same model, same batch) and prints the
step times and the median ratio on/off. Run it on an otherwise idle machine.
"""

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from mnist_cnn.config.tree import CONF_DIR
from mnist_cnn.data.datasets import IMAGE_SHAPE
from mnist_cnn.model.build import build_model
from mnist_cnn.model.layers import plan_layers


def step_ms(model, optimizer, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    layers = OmegaConf.load(CONF_DIR / "model" / "seed_cnn.yaml").layers
    model = build_model(plan_layers(layers, IMAGE_SHAPE, 10), 0.1307, 0.3081)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(args.batch_size, *IMAGE_SHAPE), torch.randint(0, 10, (args.batch_size,))
    times = {False: [], True: []}
    for _ in range(args.rounds):
        for deterministic in (False, True):
            torch.use_deterministic_algorithms(deterministic)
            step_ms(model, optimizer, x, y, 2)  # warm-up
            times[deterministic].append(step_ms(model, optimizer, x, y, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, seed_cnn, batch {args.batch_size}")
    for deterministic, label in ((False, "default      "), (True, "deterministic")):
        print(f"{label} ms/step: {', '.join(f'{t:.1f}' for t in times[deterministic])}")
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"median deterministic/default: {ratio:.3f}")


if __name__ == "__main__":
    main()
