"""Reproducibility: one seed for every RNG, their states for exact resumes, and run fingerprints."""

import hashlib
import os
import platform
import random
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

# Keys that say where a run reads and writes, not what it computes: left out of config_sha256.
NOT_IN_FINGERPRINT = ("tracking", "resume")
PACKAGES = ("torch", "torchvision", "numpy", "mlflow", "hydra-core", "omegaconf")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global RNG (weight init, dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (and cuDNN without autotuning), or PyTorch's fastest ones."""
    if enabled:  # cuBLAS needs a fixed workspace to be deterministic; read when CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def rng_state(generator: torch.Generator) -> Dict[str, Any]:
    """Every RNG state a run depends on, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data": generator.get_state(),
    }


def restore_rng_state(state: Dict[str, Any], generator: torch.Generator) -> None:
    version_, internal, gauss = state["python"]
    random.setstate((version_, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["data"])


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of the state_dict: each key, dtype, shape and the tensor's bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def config_sha256(cfg: DictConfig) -> str:
    """SHA-256 of the resolved config without `tracking` and `resume` (where it logs, not what it computes)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IN_FINGERPRINT:
        tree.pop(key, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(tree), sort_keys=True).encode()).hexdigest()


def git_state() -> Tuple[str, bool]:
    """(commit, dirty) of the checkout this package runs from; ("unknown", False) outside one."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", False
    if commit.returncode != 0:
        return "unknown", False
    return commit.stdout.strip(), bool(status.stdout.strip())


def package_versions() -> Dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
