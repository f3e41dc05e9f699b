"""MLflow stores for tests: a sqlite store migrated once per test run and copied per test, the
runs a test made, and a real `mlflow server` process."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import mlflow
import requests
from mlflow import MlflowClient

from mnist_cnn.tracking import store

HISTORY = ("train_loss", "train_acc", "val_loss", "val_acc")


def migrated_store(folder: Path) -> Path:
    """A new sqlite store with MLflow's whole schema (the migrations take seconds): copy it per test."""
    folder.mkdir(parents=True, exist_ok=True)
    store.connect(f"sqlite:///{folder}/template.db")
    return folder / "template.db"


def copy_store(template: Path, folder: Path) -> str:
    shutil.copy(template, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


def runs(uri: str, experiment: str = "mnist") -> List:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def all_runs(uri: str) -> List:
    """Every run in every experiment of the store."""
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def only_run(uri: str, experiment: str = "mnist"):
    found = runs(uri, experiment)
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def runs_by_name(uri: str, experiment: str = "mnist") -> Dict:
    return {r.info.run_name: r for r in runs(uri, experiment)}


def history(uri: str, run_id: str) -> Dict:
    client = MlflowClient(uri)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in HISTORY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on a free 127.0.0.1 port with its own sqlite store and artifact folder;
    with `app_name="basic-auth"`, MLflow's password-protected app with the user admin."""

    def __init__(self, folder: Path, port: int = 0, app_name: str = ""):
        self.folder, self.port, self.app_name = folder, port or free_port(), app_name
        self.uri = f"http://127.0.0.1:{self.port}"
        self.admin_password = "Adm1n-" + secrets.token_hex(8)
        self.process = None

    def start(self, timeout: float = 90) -> "Server":
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.folder}/server.db",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
        ]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        if self.app_name == "basic-auth":
            config = self.folder / "auth.ini"
            config.write_text(
                f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{self.folder}/auth.db\n"
                f"admin_username = admin\nadmin_password = {self.admin_password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            command += ["--app-name", "basic-auth"]
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGKILL the server's whole process group (it starts workers of its own)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
