"""How a run's end is written: its RunState as MLflow's status, with its tags (redacted), signals
held meanwhile, and without waiting on a server that went away. No torch here: a sweep's
launching process ends its parent run with it."""

import logging
from typing import Any, Dict, List

from mlflow import MlflowClient
from mlflow.entities import RunTag

from mnist_cnn import interrupts, names
from mnist_cnn.errors import failed_on_config
from mnist_cnn.tracking import store
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.states import RunState, mlflow_status

log = logging.getLogger(__name__)


def end_run(client: MlflowClient, run_id: str, state: RunState, tags: Dict[str, str]) -> None:
    """Record how the run ended, signals held; a server that no longer answers is not waited for."""
    if state is RunState.FAILED_ON_CONFIG:
        tags = {**tags, names.FAILED_ON: names.FAILED_ON_CONFIG_VALUE}
    with interrupts.held(then_stop=state is RunState.FINISHED):
        try:
            gone = store.unreachable(client.tracking_uri)
            if gone is not None:
                raise gone
            if tags:
                client.log_batch(run_id, tags=as_tags(tags))
            if state is RunState.FINISHED:  # a resumed run: what its interruption left no longer applies
                for key in set(names.STOPPED) & set(client.get_run(run_id).data.tags) - set(tags):
                    client.delete_tag(run_id, key)
            client.set_terminated(run_id, mlflow_status(state))
        except Exception as e:  # noqa: BLE001 - the store is gone: the heartbeat will show the run STALE
            log.warning(
                "could not mark run %s %s (%s); mnist-cnn-runs will show it as STALE",
                run_id,
                state.value,
                store.describe(e),
            )


def failed_state(error: BaseException) -> RunState:
    """FAILED_ON_CONFIG for an error the same config would meet again, else FAILED."""
    return RunState.FAILED_ON_CONFIG if failed_on_config(error) else RunState.FAILED


def as_tags(tags: Dict[str, Any]) -> List[RunTag]:
    return [RunTag(key, redact(str(value))) for key, value in tags.items()]


def error_tag(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")[:5000]  # MLflow caps tag values
