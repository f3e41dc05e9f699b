"""A run's heartbeat: the proof that a live process is still training it.

A RUNNING run carries the tag `mnist_cnn.heartbeat` (UTC, ISO 8601), written with each epoch's
metrics and by a background thread every `tracking.heartbeat_s` seconds in between (a long epoch,
evaluation, model logging). A RUNNING run silent for MISSED intervals has no live process behind
it (SIGKILL, a machine that lost power, a tracking server that went away): `mnist-cnn-runs` shows
it as STALE with its resume command, and `resume=` accepts it (tracking.states). A run with a fresh
heartbeat is refused, so two processes never write the same run. No MLflow import: the client is
passed in.
"""

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from mnist_cnn.names import HEARTBEAT, HEARTBEAT_INTERVAL, HOST, PID

log = logging.getLogger(__name__)

MISSED = 3  # intervals without a heartbeat before a RUNNING run counts as STALE


def now_tag() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def alive_tags(interval_s: float) -> Dict[str, str]:
    """The tags that mark a run as trained by this process, now."""
    return {
        HEARTBEAT: now_tag(),
        HEARTBEAT_INTERVAL: str(interval_s),
        HOST: socket.gethostname(),
        PID: str(os.getpid()),
    }


def silence_s(tags: Dict[str, str], start_time_ms: int) -> float:
    """Seconds since the last heartbeat (since the start for a run that never had one)."""
    beat = tags.get(HEARTBEAT)
    last = datetime.fromisoformat(beat).timestamp() if beat else start_time_ms / 1000
    return time.time() - last


def stale_after_s(tags: Dict[str, str]) -> float:
    return MISSED * float(tags.get(HEARTBEAT_INTERVAL, 30.0))


def process_gone(tags: Dict[str, str]) -> bool:
    if tags.get(HOST) != socket.gethostname() or not tags.get(PID, "").isdigit():
        return False
    try:
        os.kill(int(tags[PID]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


class Heartbeat:
    """Writes the heartbeat tag every `interval_s` seconds from a daemon thread until stopped.

    A failed write is only logged: the training thread notices a lost store on its own next write,
    and a missing heartbeat is exactly what marks a run without a live process.
    """

    def __init__(self, client: Any, run_id: str, interval_s: float):
        self.client, self.run_id, self.interval_s = client, run_id, interval_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Heartbeat":
        self._thread = threading.Thread(target=self._beat, name="mlflow-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # the daemon thread may still be inside a request; it never blocks exit

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT, now_tag())
            except Exception as e:  # noqa: BLE001 - see the class docstring
                log.debug("heartbeat for run %s failed: %s", self.run_id, type(e).__name__)
