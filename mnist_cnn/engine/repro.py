"""Reproducibility: one seed for every RNG, their states for exact resumes, deterministic kernels,
and the fingerprint of a run's final weights (its config's is config.keys.config_sha256)."""

import hashlib
import logging
import os
import random
from typing import Any, Dict

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global RNG (weight init, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the only values torch's deterministic check accepts (at::Context)


def set_deterministic(enabled: bool, compiled: bool = False) -> None:
    """Deterministic kernels (and cuDNN without autotuning), or PyTorch's fastest ones."""
    cublas_workspace(enabled)
    if compiled:
        torch.use_deterministic_algorithms(enabled)  # also sets the inductor's own flag
    else:  # the same switch without importing torch._inductor for its flag: a second of every start-up
        torch._C._set_deterministic_algorithms(enabled)
    # Deterministic mode also fills every new tensor with NaN, to catch reads of uninitialised memory:
    # a debugging aid that changes no result, and dozens of fills a step (docs/speed.md).
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def cublas_workspace(deterministic: bool) -> None:
    """A cuBLAS workspace that deterministic matmuls accept, set before this process's first one.
    torch reads CUBLAS_WORKSPACE_CONFIG once a process (its check, like cuBLAS's workspace size, is
    kept from the first matmul), so an inherited value that is not deterministic made a deterministic
    run raise at its first matmul: it is replaced, with a warning. Unset, it is set for every run,
    deterministic or not, so that a deterministic job after a fast one in the same process (a sweep
    on the basic launcher) still passes; a value a user set is left to a run that is not deterministic."""
    current = os.environ.get(CUBLAS_WORKSPACE)
    if current in CUBLAS_DETERMINISTIC or (current is not None and not deterministic):
        return
    if current is not None:
        log.warning(
            "%s=%r is not a workspace cuBLAS is deterministic with; trainer.deterministic=true sets it to %r.",
            CUBLAS_WORKSPACE,
            current,
            CUBLAS_DETERMINISTIC[0],
        )
    os.environ[CUBLAS_WORKSPACE] = CUBLAS_DETERMINISTIC[0]


def rng_state(generator: torch.Generator, device: torch.device) -> Dict[str, Any]:
    """Every RNG state a run depends on, as tensors and plain values (loadable with weights_only).
    Of the CUDA generators, the one of the device the run trains on (dropout's masks): under DDP
    rank r trains on cuda:r, and every rank's draws are alike (engine.distributed), so the state rank
    0 saves of its own device is each rank's own."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "data": generator.get_state(),
    }


def restore_rng_state(state: Dict[str, Any], generator: torch.Generator, device: torch.device) -> None:
    """Put back what rng_state saved; the CUDA state goes to `device`, the one this process trains on,
    and no other device is touched.

    A checkpoint written before holds get_rng_state_all() of the process that saved it, every
    visible device's state in device order. Of these only cuda:0 was drawn from (rank 0's GPU under
    DDP, and a one-process run's; the others kept their seeded start), so its entry is the run's
    state, restored as a state saved now is: rank r taking the list's cuda:r entry, as
    set_rng_state_all had it do, gave it a state rank 0 never drew from. (A sweep's job that a
    machine with several GPUs placed on cuda:k > 0 drew from entry k: resumed from such a checkpoint,
    its dropout masks are not the uninterrupted run's.)"""
    version_, internal, gauss = state["python"]
    random.setstate((version_, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    if isinstance(cuda, list):  # a checkpoint from before (empty where it was saved without a GPU)
        cuda = cuda[0] if cuda else None
    if cuda is not None and device.type == "cuda":  # a run on a GPU resumed on a CPU has no use for it
        torch.cuda.set_rng_state(cuda, device)
    generator.set_state(state["data"])


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the state_dict: each key, dtype, shape and the tensor's bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
