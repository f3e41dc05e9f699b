"""Credentials never reach a log, a file, a param or a tag: typed into tracking.uri they move into
MLflow's environment variables, and whatever is written is redacted."""

import os
import signal

import pytest
from mlflow import MlflowClient

from mnist_cnn.errors import TrackingError
from mnist_cnn.tracking import store
from mnist_cnn.tracking.ending import error_tag
from mnist_cnn.tracking.links import resume_command
from mnist_cnn.tracking.redact import move_credentials, redact, redact_uri, split_http_credentials
from tests.helpers import processes
from tests.helpers.mlflow_store import Server, free_port

SECRET = "s3cret-Pw"


@pytest.mark.parametrize(
    "uri, shown",
    [
        (f"http://alice:{SECRET}@host:5000", "http://alice:***@host:5000"),
        (f"https://host/api?token={SECRET}&x=1", "https://host/api?token=***&x=1"),
        (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        (f"s3://bucket/x?X-Amz-Signature={SECRET}", "s3://bucket/x?X-Amz-Signature=***"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("http://alice@host", "http://alice@host"),
    ],
)
def test_uris_are_redacted(uri, shown):
    assert redact_uri(uri) == shown
    assert redact(f"cannot reach {uri}: refused") == f"cannot reach {shown}: refused"


def unset_for_this_test(monkeypatch, *keys: str) -> None:
    """Unset `keys` now and put them back as they were (unset included) when the test ends: delenv
    alone records nothing for a variable that is not set, and what the code under test sets would
    then stay for every later test."""
    for key in keys:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_URI")


def test_http_credentials_move_into_mlflows_variables(monkeypatch):
    unset_for_this_test(monkeypatch, *CREDENTIALS)
    assert split_http_credentials(f"http://alice:{SECRET}@h:5000/?token=t") == (
        "http://h:5000/",
        {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET, "MLFLOW_TRACKING_TOKEN": "t"},
    )
    argv = [
        "mnist-cnn-train",
        f"tracking.uri=http://alice:{SECRET}@h:5000",
        f"+tracking.uri=postgresql://u:{SECRET}@db/m",
        "seed=1",
    ]
    assert move_credentials(argv) == [
        "mnist-cnn-train",
        "tracking.uri=http://h:5000",
        "+tracking.uri=${oc.env:MLFLOW_TRACKING_URI}",
        "seed=1",
    ]
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET and SECRET in os.environ["MLFLOW_TRACKING_URI"]


def test_messages_and_tags_never_hold_the_password(monkeypatch):
    unset_for_this_test(monkeypatch, *CREDENTIALS)
    with pytest.raises(TrackingError) as e:
        store.connect(f"http://alice:{SECRET}@127.0.0.1:9")
    assert SECRET not in str(e.value) and "127.0.0.1:9" in str(e.value)
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == SECRET  # MLflow sends it; the URI it saw had none
    assert SECRET not in resume_command("abc", f"postgresql://u:{SECRET}@db/m")
    assert SECRET not in error_tag(RuntimeError(f"API request to http://alice:{SECRET}@h/api failed"))


@pytest.mark.slow
def test_a_run_against_a_password_protected_server_writes_the_password_nowhere(tiny_root, tmp_path):
    """MLflow's basic-auth server refuses requests without the right password, so the run landing at
    all proves the credentials were sent; then nothing the run wrote or printed holds them."""
    server = Server(tmp_path / "server", free_port(), app_name="basic-auth").start()
    try:
        uri = f"http://admin:{server.admin_password}@127.0.0.1:{server.port}"
        job = processes.start(
            processes.train_command(tiny_root, uri, "trainer.epochs=3", "tracking.log_model=false"), tmp_path
        )
        for line in job.stdout:
            if "epoch 1/3" in line:
                job.send_signal(signal.SIGTERM)  # KILLED, with a resume command
                break
        output = line + job.communicate(timeout=120)[0]
        assert job.returncode == 130, output[-3000:]
        assert server.admin_password not in output

        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=server.admin_password)
        client = MlflowClient(server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
        assert run.info.status == "KILLED" and run.data.params["tracking.uri"] == server.uri
        assert run.data.tags["resume_command"] == f"mnist-cnn-train resume={run.info.run_id} tracking.uri={server.uri}"
        written = [
            str(run.data.params),
            str(run.data.tags),
            client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)),
        ]
        written[-1] = open(written[-1]).read()
        for path in (tmp_path / "outputs").rglob("*"):
            if path.is_file():
                written.append(path.read_bytes().decode("latin-1"))  # .hydra/*.yaml, the log, the checkpoint
        assert len(written) > 6 and not [w for w in written if server.admin_password in w]
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        server.stop()


def test_credentials_in_hydras_own_files_are_masked(tmp_path):
    """A URI with a password written in an experiment file reaches Hydra's .hydra/*.yaml: masked there."""
    from omegaconf import OmegaConf

    from mnist_cnn.sweep.callback import MlflowSweepCallback

    written = tmp_path / ".hydra"
    written.mkdir()
    (written / "config.yaml").write_text(f"tracking:\n  uri: http://alice:{SECRET}@host:5000\n")
    (written / "overrides.yaml").write_text("- seed=1\n")
    (tmp_path / "multirun.yaml").write_text(f"tracking:\n  uri: http://alice:{SECRET}@host:5000\n")
    hydra = {"output_subdir": ".hydra", "runtime": {"output_dir": str(tmp_path)}, "sweep": {"dir": str(tmp_path)}}
    MlflowSweepCallback().on_job_start(OmegaConf.create({"hydra": hydra}))
    assert (written / "config.yaml").read_text() == "tracking:\n  uri: http://alice:***@host:5000\n"
    assert (tmp_path / "multirun.yaml").read_text() == "tracking:\n  uri: http://alice:***@host:5000\n"
    assert (written / "overrides.yaml").read_text() == "- seed=1\n"


def test_ui_links_open_the_training_view_and_never_show_credentials():
    from mnist_cnn.tracking.links import experiment_url, model_version_url, run_url

    view = "?workflowType=machine_learning"
    assert (
        run_url(f"http://alice:{SECRET}@host:5000/", "1", "abc") == f"http://host:5000/#/experiments/1/runs/abc{view}"
    )
    # make ui
    assert experiment_url("sqlite:////x/mlflow.db", "3") == f"http://127.0.0.1:5000/#/experiments/3/runs{view}"
    assert (
        model_version_url("https://mlflow.example.com", "my digits", "2")
        == f"https://mlflow.example.com/#/models/my%20digits/versions/2{view}"
    )


def test_no_credential_outlives_the_test_that_set_it():
    """Runs after the tests above (file order): what move_credentials and store.connect set is gone."""
    assert not {key for key in CREDENTIALS if SECRET in os.environ.get(key, "")}
