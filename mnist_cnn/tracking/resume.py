"""What MLflow holds for a run being resumed: its config, its last checkpoint, and whether any
process is still training it (engine.resume decides what to do with them)."""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mlflow.exceptions import MlflowException

from mnist_cnn.errors import CheckpointError
from mnist_cnn.tracking import store
from mnist_cnn.tracking.heartbeat import HOST, PID, is_stale, silence_s, stale_after_s
from mnist_cnn.tracking.lookup import find_run, run_config
from mnist_cnn.tracking.redact import redact

CHECKPOINT = "checkpoints/last.pt"  # the artifact every epoch rewrites


def fetch_run(uri: str, run_id: str, folder: str) -> Tuple[Dict[str, Any], Optional[Path]]:
    """Run `run_id`'s config tree, and its last checkpoint downloaded into `folder` (None when no
    epoch had completed)."""
    client = store.connect(uri)
    where = f"resume={run_id}"
    find_run(client, run_id, where)
    tree = run_config(client, run_id, folder, where)
    if CHECKPOINT not in {a.path for a in client.list_artifacts(run_id, "checkpoints")}:
        return tree, None  # stopped before its first epoch ended: start again in the same run
    return tree, Path(client.download_artifacts(run_id, CHECKPOINT, folder))


def check_resumable(uri: str, run_id: str, where: str) -> None:
    """Refuse a FINISHED run, a missing one, and a RUNNING one that a live process still writes."""
    client = store.connect(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise CheckpointError(
            f"{where}: the checkpoint belongs to MLflow run {run_id}, which {redact(uri)} does not hold. Pass the "
            "tracking.uri it was logged to, or tracking.enabled=false to continue without tracking."
        ) from e
    if run.info.status == "FINISHED":
        raise CheckpointError(f"{where}: run {run_id} already FINISHED; there is nothing to resume.")
    if run.info.status == "RUNNING" and not is_stale(run):
        tags = run.data.tags
        raise CheckpointError(
            f"{where}: run {run_id} is RUNNING and its heartbeat is {silence_s(tags, run.info.start_time):.0f} s old: "
            f"a process (pid {tags.get(PID, '?')} on {tags.get(HOST, '?')}) may still be training it. Stop that "
            f"process first; a run whose heartbeat is older than {stale_after_s(tags):.0f} s counts as stale and can "
            "be resumed."
        )
