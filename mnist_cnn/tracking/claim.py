"""One writer per run: the claim a process makes before it continues a run.

Each process that continues a run logs the next param `mnist_cnn.continued_by.N` (`HOST PID
TIME`). MLflow's store refuses a second value for a param, so of two processes that start together
exactly one gets N; a later one is refused while the holder of the latest N may still be at it.
"""

import os
import socket
import time
from datetime import datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mnist_cnn import names
from mnist_cnn.errors import CheckpointError
from mnist_cnn.tracking.heartbeat import now_tag, process_gone, stale_after_s
from mnist_cnn.tracking.states import RunState, state_of


def claim(client: MlflowClient, run_id: str) -> None:
    """Make this process the one that continues run `run_id`, or raise CheckpointError naming the one
    that does."""
    run = client.get_run(run_id)
    claims = sorted((int(k.rpartition(".")[2]), v) for k, v in run.data.params.items() if k.startswith(names.CLAIM))
    if claims and claim_holds(claims[-1][1], run):
        raise _taken(run_id, claims[-1][1])
    key = f"{names.CLAIM}{claims[-1][0] + 1 if claims else 1}"
    try:
        client.log_param(run_id, key, claim_value())
    except MlflowException as e:
        holder = client.get_run(run_id).data.params.get(key)
        if holder is None:
            raise
        raise _taken(run_id, holder) from e


def claim_value() -> str:
    """Who continues a run: `HOST PID TIME`."""
    return f"{socket.gethostname()} {os.getpid()} {now_tag()}"


def claim_holds(value: str, run: Any) -> bool:
    """Whether the process that logged claim `value` on `run` may still be continuing it: on this
    machine, while its pid lives (and is not this process); elsewhere, while the run is RUNNING with
    a fresh heartbeat, or for the first heartbeat's worth of seconds after the claim (before the run
    is marked RUNNING)."""
    host, pid, claimed = (value.split(" ") + ["", "", ""])[:3]
    if host == socket.gethostname() and pid.isdigit():  # this process's own claim is over: it asks again
        return pid != str(os.getpid()) and not process_gone({names.HOST: host, names.PID: pid})
    if state_of(run) is RunState.RUNNING:
        return True
    try:
        return time.time() - datetime.fromisoformat(claimed).timestamp() < stale_after_s(run.data.tags)
    except ValueError:
        return False


def _taken(run_id: str, holder: str) -> CheckpointError:
    host, pid, since = (holder.split(" ") + ["?", "?", "?"])[:3]
    return CheckpointError(
        f"run {run_id} is being continued by another process (pid {pid} on {host}, since {since}); only one "
        "process may continue a run. Let it finish, or stop it and resume again."
    )
