"""`trainer.precision`: fp32 or bf16 as configured, or (null) whichever trains this network faster on
this device, measured on it rather than assumed.

Whether bf16 pays depends on the device and the net: docs/speed.md (Precision) has machines where
these nets ran slower in bf16 and one where they ran faster. CPUs without AVX-512 bf16 kernels (AVX2
only, or ATEN_CPU_CAPABILITY=avx2) run bf16 several times slower, so there only fp32 is considered.
Otherwise a few training steps of the run's own model and batch are timed in each precision, taking
turns, on a copy of the model and under a forked RNG: the run's weights, batchnorm statistics and
random streams are untouched. bf16 is picked only when clearly faster (MARGIN): it also costs
accuracy. The choice is cached per process (a sweep on the basic launcher measures each net once),
and a run records it, so a resumed run keeps its precision. Jobs of a sweep that run side by side on
one machine (joblib, Slurm) each measure while the others run, and may pick differently: give such
sweeps trainer.precision explicitly.

On a GPU, fp32 matmuls use TF32 tensor cores (`use_tensor_cores`); convolutions already do by
default (cudnn.allow_tf32). Every process that trains sets it when it prepares its device
(runner.setup.prepare): a resumed run, which takes its precision from the checkpoint and measures
nothing, and every DDP rank, where rank 0 alone measures, compute as the run that measured.
"""

import copy
import logging
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MARGIN = 1.05  # bf16 must be at least 5% faster a step than fp32 to be picked
WARMUP, ROUNDS, STEPS = 3, 4, 2  # per precision: steps before timing, rounds taking turns, steps per round


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32 | bf16
    reason: str  # one line: configured, why bf16 was not considered, or the measured step times


_measured: Dict[tuple, Choice] = {}


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forward pass and loss; weights, gradients and metric sums stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def use_tensor_cores(device: torch.device) -> None:
    """fp32 matmuls on `device` as every run computes them: on CUDA, TF32 tensor cores (cuBLAS's
    flag; `torch.set_float32_matmul_precision("high")` would also switch oneDNN's CPU matmuls to
    TF32); on a CPU nothing changes."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True


def candidates(name: Optional[str], device: torch.device) -> Tuple[str, ...]:
    """The precisions `name` may resolve to on `device`: itself, or for null fp32 and, where the
    device has fast bf16 kernels, bf16."""
    if name is not None:
        return (str(name),)
    return ("fp32", "bf16") if bf16_kernels(device) else ("fp32",)


def bf16_kernels(device: torch.device) -> bool:
    """GPUs that support bf16; CPUs with AMX or AVX512-BF16 where torch runs its AVX-512 kernels."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    hardware = (
        getattr(torch.cpu, "_is_amx_tile_supported", bool)() or getattr(torch.cpu, "_is_avx512_bf16_supported", bool)()
    )
    return hardware and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def choose(name: Optional[str], model: nn.Module, batch_size: int, device: torch.device) -> Choice:
    """The run's precision: `name` if set, else the faster of fp32 and bf16 for `model` on `device`
    (whose fp32 matmuls `use_tensor_cores` has set already)."""
    options = candidates(name, device)
    if name is not None:
        return Choice(options[0], "configured (trainer.precision)")
    if len(options) == 1:
        return Choice("fp32", f"{device.type} has no fast bf16 kernels here, so bf16 was not tried")
    key = (
        str(device),
        repr(model),
        batch_size,
        next(model.parameters()).is_contiguous(memory_format=torch.channels_last),
    )
    if key not in _measured:
        times = step_times(model, batch_size, device)
        faster = "bf16" if times["fp32"] > MARGIN * times["bf16"] else "fp32"
        _measured[key] = Choice(
            faster, f"measured a step of batch {batch_size}: fp32 {times['fp32']:.2f} ms, bf16 {times['bf16']:.2f} ms"
        )
    return _measured[key]


def step_times(model: nn.Module, batch_size: int, device: torch.device) -> Dict[str, float]:
    """Milliseconds of a forward and backward pass in each precision: the fastest of ROUNDS rounds,
    the two taking turns so that a machine's drift affects both alike, and the minimum so that a
    round slowed by other work (another job still importing) does not decide."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        images = torch.rand(batch_size, 1, 28, 28, device=device)
        with torch.no_grad():
            classes = probe(images[:2]).shape[1]
        labels = torch.randint(0, classes, (batch_size,), device=device)
        for precision in ("fp32", "bf16"):
            _steps(probe, images, labels, precision, WARMUP)
        rounds = {"fp32": [], "bf16": []}
        for _ in range(ROUNDS):
            for precision, times in rounds.items():
                times.append(_steps(probe, images, labels, precision, STEPS) / STEPS * 1000)
    return {precision: min(times) for precision, times in rounds.items()}


def _steps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str, n: int) -> float:
    """Seconds for `n` forward and backward passes (the device synchronised before each reading)."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        with autocast(images.device, precision):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
    sync()
    return time.perf_counter() - start
