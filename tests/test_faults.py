"""Tracking stores that misbehave: a new sqlite store opened by several processes at once, a store
left half-migrated, a folder that takes no files, a server that is unreachable, hangs or dies
mid-run. Each gets a clear message within seconds, and nothing is lost."""

import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mnist_cnn.engine.checkpoint import load_checkpoint
from mnist_cnn.errors import TrackingError
from mnist_cnn.runner import train
from mnist_cnn.tracking import store
from tests.helpers import processes
from tests.helpers.mlflow_store import Server, all_runs, free_port, only_run, runs_by_name

RUNS = [processes.TRAIN[0], "-m", "mnist_cnn.cli.runs"]


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """Unlocked, 4 processes on a new store fail with alembic errors and can break it for good."""
    uri = f"sqlite:///{tmp_path}/new.db"
    code = (
        "import sys; from mnist_cnn.tracking import store; "
        "client = store.connect(sys.argv[1]); "
        "run = client.create_run(store.experiment_id(client, 'mnist')); client.set_terminated(run.info.run_id)"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, uri], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for _ in range(4)
    ]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, errors
    assert len(all_runs(uri)) == 4 and {r.info.status for r in all_runs(uri)} == {"FINISHED"}


def test_a_job_that_loses_the_race_to_insert_the_dataset_still_opens_its_run(
    tiny_cfg, store_uri, tmp_path, monkeypatch
):
    """Two sweep jobs starting together both insert the dataset; the second fails on the unique key
    (PostgreSQL's message, seen on the Slurm cluster) and asks again, finding the first's row."""
    real, raised = MlflowClient.log_inputs, []

    def log_inputs(self, *args, **kwargs):
        if not raised:
            raised.append(True)
            raise MlflowException(
                '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
            )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_inputs", log_inputs)
    train.run(tiny_cfg("trainer.limit_batches=1", "tracking.log_model=false"), tmp_path / "out")
    run = only_run(store_uri)
    assert raised and run.info.status == "FINISHED" and len(run.inputs.dataset_inputs) == 1


@pytest.mark.filterwarnings("ignore:Unnamed CHECK constraint")  # alembic, on the store broken on purpose
def test_a_half_migrated_store_says_what_to_do(store_template, tmp_path):
    """What an interrupted first creation leaves: an old schema version, a missing table, and
    alembic's temporary table."""
    broken = tmp_path / "broken.db"
    broken.write_bytes(store_template.read_bytes())
    with sqlite3.connect(broken) as db:
        db.execute("UPDATE alembic_version SET version_num = 'a8c4a736bde6'")
        db.execute("DROP TABLE logged_models")
        db.execute("CREATE TABLE _alembic_tmp_latest_metrics (x INTEGER)")
    with pytest.raises(
        TrackingError,
        match=f"the store was left half-migrated .* Restore {broken} from a backup, or .* move it away and start again",
    ):
        store.connect(f"sqlite:///{broken}")


def test_a_store_from_an_older_mlflow_says_how_to_upgrade_it(store_template, tmp_path):
    old = tmp_path / "old.db"
    old.write_bytes(store_template.read_bytes())
    with sqlite3.connect(old) as db:
        db.execute("UPDATE alembic_version SET version_num = 'a8c4a736bde6'")
    with pytest.raises(
        TrackingError,
        match=f"made by an older MLflow. Back it up, then upgrade it with: mlflow db upgrade sqlite:///{old}",
    ):
        store.connect(f"sqlite:///{old}")


def test_a_deleted_experiment_is_named(store_uri):
    client = store.connect(store_uri)
    client.delete_experiment(store.experiment_id(client, "gone"))
    with pytest.raises(TrackingError, match="tracking.experiment='gone' was deleted; restore it"):
        store.experiment_id(client, "gone")


def test_an_unwritable_sqlite_folder_fails_at_once(tmp_path):
    start = time.perf_counter()
    with pytest.raises(TrackingError, match=r"tracking.uri='sqlite:////proc/x.db': cannot create files in /proc"):
        store.connect("sqlite:////proc/x.db")
    assert time.perf_counter() - start < 10  # MLflow alone retries for about 100 s


def test_an_unknown_scheme_is_named():
    with pytest.raises(TrackingError) as e:
        store.connect("nosuchscheme://x")
    assert str(e.value).startswith("tracking.uri='nosuchscheme://x': cannot open the MLflow store (")
    assert "Use sqlite:///PATH.db for a local store" in str(e.value) and "the http(s):// address of" in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["mnist-cnn-runs", "mnist-cnn-train"])
def test_a_closed_port_fails_fast_with_exit_2(tiny_root, tmp_path, command):
    """Nothing listens on port 9: the first request is refused, and the command says so at once
    (training, after it read its data, before it trains)."""
    uri = "http://127.0.0.1:9"
    if command == "mnist-cnn-runs":
        argv = [*RUNS, "--tracking-uri", uri]
    else:
        argv = processes.train_command(tiny_root, uri, "trainer.precision=fp32")  # fp32: no timing of bf16 first
    start = time.perf_counter()
    out = processes.run(argv, tmp_path)
    console = out.stdout + out.stderr
    assert out.returncode == 2, console[-2000:]
    assert f"tracking.uri='{uri}': cannot open the MLflow store (connection refused)" in console
    assert "Traceback" not in console and "epoch 1/1" not in console
    assert time.perf_counter() - start < 15


@pytest.mark.slow
def test_runs_against_a_server_that_never_answers_gives_up_after_its_10_s_not_mlflows_minutes(tmp_path):
    """A socket that accepts connections but never replies: what a hung or stopped server looks like.
    The command gives up after 10 s of silence (its start and imports come on top: seconds, more on a
    loaded machine), where MLflow's own retries would wait minutes."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        start = time.perf_counter()
        out = processes.run(
            [*RUNS, "--tracking-uri", f"http://127.0.0.1:{silent.getsockname()[1]}"], tmp_path, timeout=120
        )
        seconds = time.perf_counter() - start
    assert out.returncode == 2 and "cannot open the MLflow store (no answer within 10 s)" in out.stderr
    assert seconds < 45, seconds


@pytest.mark.slow
def test_predict_against_a_server_that_refuses_the_password_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """MLflow's password-protected server (its basic-auth app) refuses a wrong password: one line
    that says so and never shows the password, exit 2."""
    from PIL import Image

    from mnist_cnn.cli import predict

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # restored after the test: the URI's
        monkeypatch.setenv(key, "")  # credentials move into these, which other tests must not inherit
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), "black").save(image)
    wrong = "Wr0ng-" + secrets.token_hex(8)
    server = Server(tmp_path / "server", app_name="basic-auth").start()
    try:
        with pytest.raises(SystemExit) as e:
            predict.main(
                ["--model", "0" * 32, "--tracking-uri", f"http://admin:{wrong}@127.0.0.1:{server.port}", str(image)]
            )
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.splitlines() == [
        f"mnist-cnn-predict: tracking.uri='{server.uri}': the server refused these credentials (401 not "
        "authenticated). Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an "
        "account of that server that may write runs."
    ]
    assert wrong not in err


@pytest.mark.slow
def test_a_server_that_dies_mid_run_ends_training_with_the_way_back(tiny_root, tmp_path):
    """The server is killed after epoch 1: training stops within about a minute, keeps its checkpoint,
    says how to resume; once the server is back, that command finishes the same run."""
    server = Server(tmp_path / "server", free_port()).start()
    try:
        command = processes.train_command(
            tiny_root, server.uri, "trainer.epochs=3", "tracking.log_model=false", "tracking.run_name=lost"
        )
        job = processes.start(command, tmp_path)
        for line in job.stdout:
            if "epoch 1/3" in line:
                server.stop()
                stopped = time.perf_counter()
                break
        output = line + job.communicate(timeout=180)[0]
        seconds = time.perf_counter() - stopped
        assert job.returncode == 3, output[-3000:]
        assert seconds < 70, seconds
        assert f"the MLflow store at {server.uri} stopped answering (connection refused)" in output
        checkpoint = next(tmp_path.glob("outputs/*/*/checkpoints/last.pt"))
        assert f"continue the same run with:\n  mnist-cnn-train resume={checkpoint} tracking.uri={server.uri}" in output

        server.start()  # same port, same store: the server is back
        resumed = processes.run([*processes.TRAIN, f"resume={checkpoint}", f"tracking.uri={server.uri}"], tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        (run,) = runs_by_name(server.uri).values()
        saved = load_checkpoint(checkpoint)["epoch"]  # the last epoch trained before the server died
        assert run.info.run_name == "lost" and run.info.status == "FINISHED"
        assert run.data.tags["resumed_at_epoch"] == str(saved + 1)
        steps = [m.step for m in MlflowClient(server.uri).get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2, 3]  # the epoch trained while the server was gone is there too, once
    finally:
        server.stop()


@pytest.mark.slow
def test_sigterm_stops_training_while_the_server_hangs(tiny_root, tmp_path):
    """The server is frozen (SIGSTOP) mid-run: a second SIGTERM stops the process within seconds."""
    server = Server(tmp_path / "server", free_port()).start()
    try:
        job = processes.start(
            processes.train_command(tiny_root, server.uri, "trainer.epochs=50", "tracking.log_model=false"), tmp_path
        )
        for line in job.stdout:
            if "epoch 1/50" in line:
                os.killpg(server.process.pid, signal.SIGSTOP)
                break
        time.sleep(2)  # the next epoch's logging now hangs
        job.send_signal(signal.SIGTERM)
        time.sleep(1)
        job.send_signal(signal.SIGTERM)
        start = time.perf_counter()
        job.communicate(timeout=120)
        assert job.returncode == 130 and time.perf_counter() - start < 25
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
        server.stop()


def test_reading_commands_never_create_an_empty_store(tmp_path, capsys):
    """`mnist-cnn-runs` (like eval and predict) against a store that does not exist says so, and leaves no file."""
    from mnist_cnn.cli import runs

    with pytest.raises(SystemExit) as e:
        runs.main(["--tracking-uri", f"sqlite:///{tmp_path}/typo.db"])
    assert e.value.code == 2 and f"there is no MLflow store at {tmp_path}/typo.db" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.slow
def test_the_team_server_script_on_a_taken_port_says_so_and_exits_3(tmp_path):
    """deploy/mlflow_server.sh up on a port another process holds: one line naming the port, exit 3
    as soon as the server gives up (deploy/cluster.sh then tries another port), no process left."""
    state = tmp_path / "server"
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        script = [str(Path(__file__).parents[1] / "deploy" / "mlflow_server.sh"), "up", str(state), str(port)]
        start = time.perf_counter()
        out = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - start
    assert out.returncode == 3, out.stderr[-2000:]
    assert out.stderr.splitlines()[-1] == (
        f"mlflow server: port {port} on 127.0.0.1 is taken by another process; choose another PORT"
    )
    assert seconds < 45  # it gives up once the server exits, not after its minute of waiting
    assert not (state / "server.pid").exists()
