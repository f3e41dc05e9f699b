"""Checkpoints: written atomically, read back without unpickling arbitrary objects."""

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from mnist_cnn.errors import CheckpointError


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[Any],
    epoch: int,
    global_step: int,
    rng: Dict[str, Any],
) -> Path:
    """Write everything a run needs to continue exactly after `epoch` (model, optimizer, scheduler,
    step count, every RNG state) via a temporary file and a rename: a crash or kill during the
    write leaves the previous checkpoint intact, never a truncated one.
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "global_step": global_step,
        "rng": rng,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: tensors and plain containers, no arbitrary code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or run id.") from e
    except Exception as e:  # truncated zip, tampered pickle, disallowed global, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "It is truncated, corrupt or holds objects other than tensors; use another checkpoint."
        ) from e
    missing = {"model", "optimizer", "scheduler", "epoch", "global_step", "rng"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(sorted(missing))}; it was not written by mnist_cnn.")
    return state
