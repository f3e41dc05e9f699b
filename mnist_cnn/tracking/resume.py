"""What MLflow holds for a run being resumed: its config, its last checkpoint, and whether any
process is still training it (engine.resume decides what to do with them)."""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mlflow import MlflowClient

from mnist_cnn.errors import CheckpointError
from mnist_cnn.tracking import store
from mnist_cnn.tracking.heartbeat import HOST, PID, is_stale, silence_s, stale_after_s
from mnist_cnn.tracking.lookup import find_run, run_config

CHECKPOINT = "checkpoints/last.pt"  # the artifact every epoch rewrites


def resumable_run(uri: str, run_id: str, where: str) -> MlflowClient:
    """A client for `uri`, once run `run_id` is known to be there and free to continue: not FINISHED,
    and not RUNNING with a live process behind it."""
    client = store.connect(uri)
    run = find_run(client, run_id, where)
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
    return client


def fetch_run(client: MlflowClient, run_id: str, folder: str, where: str) -> Tuple[Dict[str, Any], Optional[Path]]:
    """Run `run_id`'s config tree, and its last checkpoint downloaded into `folder` (None when no
    epoch had completed)."""
    tree = run_config(client, run_id, folder, where)
    if CHECKPOINT not in {a.path for a in client.list_artifacts(run_id, "checkpoints")}:
        return tree, None  # stopped before its first epoch ended: start again in the same run
    return tree, Path(client.download_artifacts(run_id, CHECKPOINT, folder))
