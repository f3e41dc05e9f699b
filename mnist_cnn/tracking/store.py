"""Opening the MLflow store named by `tracking.uri` so that it fails fast, never hangs, never breaks.

- Every HTTP request is bounded (MLflow's own settings, set once unless the environment sets
  them): a 10 s timeout and 3 retries with backoff end a request within about a minute, where
  MLflow's defaults take 4 minutes against a dead server and 20 against a hung one. Before the
  first contact, and before a run's final status, one request of our own without retries asks
  whether the server answers at all (`unreachable`): a wrong address fails in seconds, and a run
  whose server went away is left for its heartbeat to show STALE instead of waiting a minute.
- Credentials in an http(s) URI move into MLFLOW_TRACKING_USERNAME / PASSWORD / TOKEN before
  MLflow sees the URI (it would print it at the end of a run and in every error message).
- sqlite: the folder must be writable before MLflow sees the path (its engine retries an
  unopenable file for 100 s), and the schema is created under a file lock next to the database:
  processes that open a new store at the same moment otherwise break it for good. A store left
  half-migrated (by a kill during its creation, or an older mnist_cnn) gets a message saying what
  to do.
- Commands that only use a store (eval) or only read it (runs, predict) never create, migrate or
  lock one: the file must already be an MLflow store, checked read-only before MLflow opens it
  (MLflow would write its whole schema into an empty file), and a store on a read-only disk or
  without write permission can still be read.
"""

import os
import sqlite3
import tempfile
from contextlib import closing, nullcontext
from pathlib import Path
from typing import Optional

import requests
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mnist_cnn.config.paths import DEFAULT_TRACKING_URI, sqlite_path
from mnist_cnn.errors import TrackingError
from mnist_cnn.tracking.redact import redact, split_http_credentials

TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
SETTINGS = {  # MLflow's own variables, set unless the environment already does
    TIMEOUT: "10",  # seconds to connect, and for each read
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",  # 4 attempts, sleeping 0, 4 and 8 s (+ jitter): ~55 s at most
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",  # a server's Retry-After is otherwise slept in full
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # our own message names the run; saves a request
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a checkpoint download is not worth three bars
}
FIX = (
    f"Use sqlite:///PATH.db for a local store (the default is $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}), or "
    "the http(s):// address of a running MLflow server."
)


def connect(uri: str, create: bool = True, read_only: bool = False) -> MlflowClient:
    """A client for the store at `uri`, after one quick request; TrackingError if unusable. A new
    sqlite store is created (or an old one migrated) only with `create`, as training does; with
    `read_only` (implies not `create`) the file need not be writable."""
    for key, value in SETTINGS.items():
        os.environ.setdefault(key, value)
    uri, credentials = split_http_credentials(uri)
    os.environ.update(credentials)
    path = sqlite_path(uri)
    create = create and not read_only
    if path is not None and not create:
        _check_is_store(uri, path.expanduser().absolute())
    if path is not None and not read_only:
        _check_writable(uri, path)
    gone = unreachable(uri)
    if gone is not None:
        raise TrackingError(_diagnose(uri, path, gone))
    try:
        with FileLock(f"{path}.lock", timeout=300) if path and create else nullcontext():
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # creates and migrates a new store's schema
            if path is not None:
                client.search_registered_models(max_results=1)  # the model registry's tables too
    except Exception as e:  # noqa: BLE001 - MLflow raises MlflowException, OSError, SQLAlchemy and alembic errors
        raise TrackingError(_diagnose(uri, path, e)) from e
    return client


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing (a parallel job may create it first)."""
    refused = None
    for _ in range(2):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"tracking.experiment={name!r} was deleted; restore it (mlflow experiments restore) or pick another "
                "name."
            )
        if experiment is not None:
            return experiment.experiment_id
        try:  # the tag tells UIs that read it that this is model training, not a GenAI app
            return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException as e:  # created by another process in between: read it again
            refused = e
    reason = f" ({describe(refused)})" if refused is not None else ""
    raise TrackingError(f"tracking.experiment={name!r} could neither be found nor created{reason}.")


def unreachable(uri: str) -> Optional[requests.RequestException]:
    """The error of one request, without retries, to the tracking server at `uri` (its `/health`,
    which needs no password), or None when it answers within a request's timeout or `uri` is not a
    server's."""
    if not uri.startswith(("http://", "https://")):
        return None
    base, _ = split_http_credentials(uri)
    timeout = float(os.environ.get(TIMEOUT, SETTINGS[TIMEOUT]))
    try:
        requests.get(f"{base.split('?')[0].rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as e:
        return e
    return None


def is_store_failure(error: BaseException) -> bool:
    """True for what a failing store raises, as opposed to a bug in the caller."""
    return isinstance(error, (MlflowException, requests.RequestException, OSError)) or type(
        error
    ).__module__.startswith("sqlalchemy")


def describe(error: BaseException) -> str:
    """One short line for `error`: the network failure underneath MLflow's wrapper, credentials masked."""
    cause: Optional[BaseException] = error
    while cause is not None:
        if isinstance(cause, requests.Timeout) or "timed out" in str(cause).lower():
            return f"no answer within {os.environ.get(TIMEOUT, SETTINGS[TIMEOUT])} s"
        if isinstance(cause, requests.ConnectionError):
            return "connection refused" if "refused" in str(cause).lower() else "connection failed"
        cause = cause.__cause__ or cause.__context__
    return redact(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")[:300]


def _check_is_store(uri: str, path: Path) -> None:
    """The sqlite file at `path` exists and holds MLflow's tables; read without writing a byte."""
    where = f"tracking.uri={redact(uri)!r}"
    if not path.is_file():
        raise TrackingError(f"{where}: there is no MLflow store at {path}. {FIX}")
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as e:
        raise TrackingError(f"{where}: {path} is not an MLflow store (sqlite: {e}). {FIX}") from e
    if not {"experiments", "runs", "alembic_version"} <= tables:
        what = "an empty file" if path.stat().st_size == 0 else "a database without MLflow's tables"
        raise TrackingError(
            f"{where}: {path} is {what}, not an MLflow store; commands that read runs never create one. {FIX}"
        )


def _check_writable(uri: str, path: Path) -> None:
    """Fail in milliseconds where MLflow would retry for 100 s: the folder must take new files."""
    folder = path.expanduser().absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mnist_cnn_write_test"):
            pass
    except OSError as e:
        raise TrackingError(
            f"tracking.uri={redact(uri)!r}: cannot create files in {folder} ({e.strerror or e}), which sqlite needs "
            f"for the database and its journal. Choose a writable folder. {FIX}"
        ) from e


def _diagnose(uri: str, path: Optional[Path], error: BaseException) -> str:
    """The message for a store that cannot be opened, with what to do about it."""
    where = f"tracking.uri={redact(uri)!r}"
    text = str(error)
    if "out-of-date database schema" in text:
        return (
            f"{where}: the store was made by an older MLflow. Back it up, then upgrade it with: mlflow db upgrade "
            f"{redact(uri)}"
        )
    if path is not None and path.is_file() and _half_migrated(path, text):
        return (
            f"{where}: the store was left half-migrated (its schema upgrade was interrupted, e.g. by a process "
            f"killed while creating it, or by an older mnist_cnn opening it from several processes at once); "
            f"MLflow cannot use it. Restore {path} from a backup, or if it holds no runs you need, move it "
            f"away and start again (a new store is created on the next run)."
        )
    if "error code 401" in text or "error code 403" in text:
        return (
            f"{where}: the server refused these credentials "
            f"({'401 not authenticated' if '401' in text else '403 forbidden'}). "
            "Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account "
            "of that server that may write runs."
        )
    return f"{where}: cannot open the MLflow store ({describe(error)}). {FIX}"


def _half_migrated(path: Path, error_text: str) -> bool:
    """Alembic's temporary tables, or a schema step that finds its own work done, are left behind
    only by an interrupted or concurrent migration."""
    if any(sign in error_text for sign in ("already exists", "duplicate column", "alembic_version")):
        return True
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '_alembic_tmp_%'"
            ).fetchall()
    except sqlite3.Error:
        return False
    return bool(rows)
