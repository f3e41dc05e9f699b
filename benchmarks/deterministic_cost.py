"""What `trainer.deterministic=true` costs per training step, measured side by side in one process.

    python benchmarks/deterministic_cost.py [--batch-size 64] [--steps 20] [--rounds 10]

Alternates deterministic mode off and on (same model, same batch), --rounds times, and prints the
step times and the median of the rounds' ratios on/off (each round's two halves run back to back,
so a machine that drifts slows both alike). Each round switches the mode with the trainer's own
`mnist_cnn.engine.repro.set_deterministic`, so it toggles exactly what a run toggles: PyTorch's
deterministic algorithms (without their NaN-filling of new tensors) and cuDNN's deterministic,
non-autotuned kernels. On a GPU both modes run with the fixed cuBLAS workspace that deterministic
mode sets (CUBLAS_WORKSPACE_CONFIG), which cuBLAS reads once, when CUDA starts. The step is
seed_cnn's (the default net) in fp32 on a random batch, on cuda when torch sees a GPU, else on the
CPU. Run it on an otherwise idle machine.
"""

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from mnist_cnn.config.tree import CONF_DIR
from mnist_cnn.data.datasets import IMAGE_SHAPE
from mnist_cnn.engine.repro import set_deterministic
from mnist_cnn.model.build import build_model
from mnist_cnn.model.layers import plan_layers


def step_ms(model, optimizer, x, y, steps: int) -> float:
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _sync()
    return (time.perf_counter() - start) / steps * 1000


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # sets CUBLAS_WORKSPACE_CONFIG before CUDA starts, as a deterministic run does
        set_deterministic(True)
    layers = OmegaConf.load(CONF_DIR / "model" / "seed_cnn.yaml").layers
    model = build_model(plan_layers(layers, IMAGE_SHAPE, 10), 0.1307, 0.3081).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(args.batch_size, *IMAGE_SHAPE, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    times = {False: [], True: []}
    for _ in range(args.rounds):
        for deterministic in (False, True):
            set_deterministic(deterministic)
            step_ms(model, optimizer, x, y, 2)  # warm-up
            times[deterministic].append(step_ms(model, optimizer, x, y, args.steps))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {device}, seed_cnn fp32, batch {args.batch_size}")
    for deterministic, label in ((False, "default      "), (True, "deterministic")):
        print(f"{label} ms/step: {', '.join(f'{t:.1f}' for t in times[deterministic])}")
    ratio = statistics.median(on / off for on, off in zip(times[True], times[False]))
    print(f"median deterministic/default: {ratio:.3f}")


if __name__ == "__main__":
    main()
