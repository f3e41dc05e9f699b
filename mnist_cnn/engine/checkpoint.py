"""Checkpoints that carry their own config: written atomically, checked against their own SHA-256,
read without unpickling code.

A checkpoint holds everything a run needs to continue exactly after an epoch (model, optimizer,
scheduler, step count, every RNG state), the run's resolved config (credentials redacted) and its
MLflow run id when tracked, so `mnist-cnn-train resume=path/to/last.pt` works from the file alone.
"""

import contextlib
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from mnist_cnn.errors import CheckpointError

REQUIRED = {"model", "optimizer", "scheduler", "epoch", "global_step", "rng"}


def save_checkpoint(path: Path, state: Dict[str, Any]) -> Path:
    """Write `state` (the REQUIRED keys, plus `config` and `run_id`) via a temporary file and a rename:
    a crash, a kill or a full disk during the write leaves the previous checkpoint intact, never a
    truncated one. The state is stored with its SHA-256, so a file changed afterwards is refused
    instead of silently loaded. The bytes are made in memory and written by Python, whose error names
    the cause (torch's own writer reports a full disk as `unexpected pos`)."""
    payload = _serialized(state)
    outer = {
        "sha256": hashlib.sha256(payload).hexdigest(),
        "state": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(_serialized(outer))
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        again = f"mnist-cnn-train resume={state.get('run_id') or path}"
        raise CheckpointError(
            f"could not write checkpoint {path}: {(e.strerror or str(e)).lower()} (folder {path.parent}). "
            f"The last checkpoint written is intact; make room there (or choose another hydra.run.dir), then "
            f"continue with {again}."
        ) from e
    return path


def _serialized(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_checkpoint(path: Path, label: Optional[str] = None) -> Dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (tensors and plain containers, never arbitrary code)
    and check it against the SHA-256 stored with it. `label` names it in errors (e.g. the run and
    artifact it was downloaded from) instead of a temporary path."""
    label = label or f"checkpoint {path}"
    if not path.is_file():
        raise CheckpointError(f"{label} does not exist; check the path or run id.")
    outer = _load(label, path.read_bytes())
    if not isinstance(outer, dict) or not {"sha256", "state"} <= set(outer):
        raise CheckpointError(
            f"{label} was not written by mnist_cnn (no checksummed state); use a checkpoint it wrote."
        )
    payload = outer["state"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != outer["sha256"]:
        raise CheckpointError(
            f"{label} does not match its own SHA-256: it was modified or damaged; use another checkpoint."
        )
    state = _load(label, payload)
    missing = REQUIRED - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"{label} lacks {', '.join(sorted(missing))}; it was not written by mnist_cnn.")
    return state


def _load(label: str, data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message suggests weights_only=False: never for an untrusted file
        raise CheckpointError(
            f"{label} holds objects other than tensors and plain values, which are refused because loading "
            "them could run code; use a checkpoint written by mnist_cnn."
        ) from e
    except Exception as e:  # truncated zip, not a torch file at all, ...
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
        raise CheckpointError(
            f"{label} cannot be read ({reason}): it is truncated or corrupt; use another checkpoint."
        ) from e
