"""Checkpoints: written atomically, checked against their own SHA-256, read without unpickling code."""

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from mnist_cnn.errors import CheckpointError

REQUIRED = {"model", "optimizer", "scheduler", "epoch", "global_step", "rng"}


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
    write leaves the previous checkpoint intact, never a truncated one. The state is stored with
    its SHA-256, so a file changed afterwards is refused instead of silently loaded.
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "global_step": global_step,
        "rng": rng,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"sha256": hashlib.sha256(payload).hexdigest(), "state": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (tensors and plain containers, no arbitrary code)
    and check it against the SHA-256 stored with it."""
    fix = "use another checkpoint, or start the run afresh"
    outer = _load(path, path.read_bytes() if path.is_file() else None, fix)
    if not isinstance(outer, dict) or not {"sha256", "state"} <= set(outer):
        raise CheckpointError(f"checkpoint {path} was not written by mnist_cnn (no checksummed state); {fix}.")
    payload = outer["state"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
        raise CheckpointError(f"checkpoint {path} does not match its own SHA-256: it was modified or damaged; {fix}.")
    state = _load(path, payload, fix)
    missing = REQUIRED - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(sorted(missing))}; it was not written by mnist_cnn.")
    return state


def _load(path: Path, data: Optional[bytes], fix: str) -> Any:
    if data is None:
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or run id.")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, disallowed global, ...
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({reason}): it is truncated, corrupt or holds objects "
            f"other than tensors; {fix}."
        ) from e
