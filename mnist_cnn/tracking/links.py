"""Where a user goes next: links into the MLflow UI that open where they should (on the
Model-training view), and the command that continues a stopped run or sweep.

MLflow 3.17's UI opens an experiment on its GenAI overview unless the address says otherwise, and
only `?workflowType=machine_learning` placed after the `#` does (before it, it is ignored; the
`mlflow.experimentKind` tag is not read). `#/runs/ID` redirects and drops the parameter, so a run
is linked through its experiment. For a local store (sqlite, a folder) the links point at the
address of `mlflow ui`, whose command for that store `ui_hint` prints beside them.
"""

import shlex
from urllib.parse import quote

from mnist_cnn.tracking.redact import redact, split_http_credentials

LOCAL_UI_PORT = 5000  # where `mlflow ui` (and `make ui`) serves a local store
LOCAL_UI = f"http://127.0.0.1:{LOCAL_UI_PORT}"
VIEW = "workflowType=machine_learning"


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the server itself, or `mlflow ui`'s for a local store (credentials never shown)."""
    if _is_server(tracking_uri):
        return split_http_credentials(tracking_uri)[0].split("?")[0].rstrip("/")
    return LOCAL_UI


def ui_hint(tracking_uri: str) -> str:
    """For a local store, the command that serves its UI where the links point; nothing for a server."""
    if _is_server(tracking_uri):
        return ""
    command = ["mlflow", "ui", "--backend-store-uri", redact(tracking_uri), "--host", "127.0.0.1"]
    return f"  (serve this store's UI with: {shlex.join(command)} --port {LOCAL_UI_PORT})"


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{VIEW}"


def model_version_url(tracking_uri: str, name: str, version: str) -> str:
    return f"{ui_base(tracking_uri)}/#/models/{quote(name, safe='')}/versions/{version}?{VIEW}"


def resume_command(target: str, uri: str, sweep: bool = False) -> str:
    """The command that continues run (or checkpoint) `target`, or the sweep whose parent run it is;
    names the store unless it holds a secret."""
    clean = redact(uri) == uri
    command = f"mnist-cnn-train -m resume_sweep={target}" if sweep else f"mnist-cnn-train resume={target}"
    return command + (f" tracking.uri={uri}" if clean else "  # with MLFLOW_TRACKING_URI set")
