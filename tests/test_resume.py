"""Bit-for-bit reproducibility, and resuming: from a run id in any experiment or from a checkpoint
file, from any point (before the first epoch ended, mid-run, after the last epoch), never two
processes on one run."""

import os
import signal
import socket
import subprocess
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import RunTag

from mnist_cnn import names
from mnist_cnn.config.paths import TRACKING_URI_ENV
from mnist_cnn.errors import CheckpointError, ConfigError, UserError
from mnist_cnn.names import HEARTBEAT, PID
from mnist_cnn.runner import train
from mnist_cnn.tracking import claim as tracking_claim
from mnist_cnn.tracking.heartbeat import alive_tags
from tests.helpers import processes
from tests.helpers.data import write_tiny_mnist
from tests.helpers.interrupted import FAST, ctrl_c_in_epoch, killed_in_epoch_2, resume
from tests.helpers.mlflow_store import all_runs, history, only_run, runs_by_name


def test_same_seed_gives_the_same_weights_and_metrics_and_another_seed_does_not(tiny_cfg, store_uri, tmp_path):
    """bn_cnn has dropout and batchnorm, so weight init, shuffling and dropout all have to repeat."""
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train.run(tiny_cfg("model=bn_cnn", *FAST, f"seed={seed}", f"tracking.run_name={name}"), tmp_path / name)
    runs = runs_by_name(store_uri)
    a, b, c = runs["a"], runs["b"], runs["c"]
    assert a.data.tags["weights_sha256"] == b.data.tags["weights_sha256"] != c.data.tags["weights_sha256"]
    assert history(store_uri, a.info.run_id) == history(store_uri, b.info.run_id)
    assert history(store_uri, a.info.run_id)["train_loss"] != history(store_uri, c.info.run_id)["train_loss"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert (a.data.tags["seed"], c.data.tags["seed"], a.data.tags["deterministic"]) == ("1", "2", "True")  # cpu: on
    assert (a.data.tags["git_commit"], a.data.tags["git_dirty"]) == (
        head.stdout.strip(),
        str(bool(dirty.stdout.strip())),
    )
    assert a.data.tags["version.torch"] == version("torch") and a.data.tags["precision"] in ("fp32", "bf16")
    assert a.data.tags["config_sha256"] == b.data.tags["config_sha256"] != c.data.tags["config_sha256"]
    assert a.data.tags["data_sha256"] == c.data.tags["data_sha256"]


@pytest.mark.parametrize("stop_epoch", [1, 2], ids=["before-the-first-epoch-ended", "in-epoch-2"])
def test_a_run_in_a_named_experiment_resumes_to_the_uninterrupted_result(tiny_cfg, store_uri, tmp_path, stop_epoch):
    """The printed resume command works outside the default experiment, keeps the run's own tracking
    settings (log_model=false), and a run stopped before any checkpoint starts again in the same run."""
    augment = ("data.augment.rotate=15", "data.augment.translate=0.1")  # its random warps must resume too
    common = ("model=bn_cnn", *FAST, *augment, "tracking.experiment=foo")
    train.run(tiny_cfg(*common, "tracking.run_name=full"), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(*common, "tracking.run_name=cut"), tmp_path / "cut", **ctrl_c_in_epoch(stop_epoch))
    killed = runs_by_name(store_uri, "foo")["cut"]
    assert killed.info.status == "KILLED"
    assert [step for step, _ in history(store_uri, killed.info.run_id)["val_acc"]] == list(range(1, stop_epoch))

    resume(tiny_cfg(), killed.info.run_id)  # default experiment and tracking settings on the command line
    runs = runs_by_name(store_uri, "foo")
    assert set(runs) == {"full", "cut"}  # the same run continued, no new one
    full, cut = runs["full"], runs["cut"]
    assert cut.info.status == "FINISHED" and cut.data.tags["resumed_at_epoch"] == str(stop_epoch)
    assert "resume_command" not in cut.data.tags and cut.data.tags["resume_overrides"] == f"resume={killed.info.run_id}"
    assert cut.data.tags["weights_sha256"] == full.data.tags["weights_sha256"]
    assert history(store_uri, cut.info.run_id) == history(store_uri, full.info.run_id)
    artifacts = {a.path for a in MlflowClient(store_uri).list_artifacts(cut.info.run_id)}
    assert "model" not in artifacts and cut.data.params["tracking.log_model"] == "False"


def test_a_resumed_run_keeps_its_precision_and_the_reason_it_was_chosen(tiny_cfg, store_uri, tmp_path):
    run_id = killed_in_epoch_2(tiny_cfg(*FAST), store_uri, tmp_path / "out")
    before = MlflowClient(store_uri).get_run(run_id).data
    resume(tiny_cfg(), run_id)
    after = only_run(store_uri).data
    assert after.params["trainer.precision"] == before.params["trainer.precision"]
    assert after.tags["precision_reason"] == before.tags["precision_reason"] != "configured (trainer.precision)"


def test_a_resumed_run_keeps_the_environment_txt_its_start_logged(tiny_cfg, store_uri, tmp_path):
    """mnist-cnn-verify retrains from the start: the packages the start had are the ones to compare."""
    run_id = killed_in_epoch_2(tiny_cfg(*FAST), store_uri, tmp_path / "out")
    client = MlflowClient(store_uri)
    client.log_text(run_id, "torch==0.0.1\n", names.ENVIRONMENT_FILE)  # as if the start had another torch
    resume(tiny_cfg(), run_id)
    assert only_run(store_uri).info.status == "FINISHED"
    kept = Path(client.download_artifacts(run_id, names.ENVIRONMENT_FILE, str(tmp_path))).read_text()
    assert kept == "torch==0.0.1\n"


def test_an_untracked_run_resumes_from_its_checkpoint_file(tiny_cfg, store_uri, tmp_path):
    common = ("model=bn_cnn", *FAST, "tracking.enabled=false")
    full = train.run(tiny_cfg(*common), tmp_path / "full").metrics
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(*common), tmp_path / "cut", **ctrl_c_in_epoch(2))
    checkpoint = tmp_path / "cut" / "checkpoints" / "last.pt"
    resumed = resume(tiny_cfg(), str(checkpoint))  # the file carries the config: tracking stays off
    for key in ("train_loss", "val_loss", "test_loss", "test_acc"):
        assert resumed[key] == full[key], key
    assert all_runs(store_uri) == []


def test_resume_refuses_overrides_that_change_the_result_and_accepts_run_settings(tiny_cfg, store_uri, tmp_path):
    run_id = killed_in_epoch_2(tiny_cfg(*FAST), store_uri, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"optimizer.lr=0.5 would change the result of the run being resumed"):
        resume(tiny_cfg("optimizer.lr=0.5"), run_id, "optimizer.lr=0.5", "data.root=/elsewhere")
    final = resume(
        tiny_cfg("optimizer.lr=0.001", "trainer.progress=false"),
        run_id,
        "optimizer.lr=0.001",
        "trainer.progress=false",
    )
    assert final["test_acc"] > 0.5 and only_run(store_uri).info.status == "FINISHED"
    with pytest.raises(CheckpointError, match=f"run {run_id} already FINISHED; there is nothing to resume"):
        resume(tiny_cfg(), run_id)


def test_resume_of_an_unknown_run_says_so(tiny_cfg, store_uri):
    with pytest.raises(UserError, match="resume=0123456789abcdef: no run 0123456789abcdef in this tracking store") as e:
        resume(tiny_cfg(), "0123456789abcdef")
    assert str(e.value).endswith(f" It was looked for in tracking.uri={store_uri!r}.")
    assert all_runs(store_uri) == []


def test_resume_from_a_folder_without_the_store_names_where_it_looked_and_creates_none(tiny_cfg, tmp_path):
    """`mnist-cnn-train resume=RUN` started in another folder, without tracking.uri: the default
    ./mlflow.db is not there, and a resume only looks a run up."""
    elsewhere = f"sqlite:///{tmp_path}/elsewhere/mlflow.db"
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UserError) as e:
        resume(tiny_cfg(f"tracking.uri={elsewhere}"), "0123456789abcdef0123456789abcdef")
    assert str(e.value).startswith(
        f"resume=0123456789abcdef0123456789abcdef: run 0123456789abcdef0123456789abcdef was looked for in "
        f"tracking.uri={elsewhere!r}: there is no MLflow store at {tmp_path}/elsewhere/mlflow.db."
    )
    assert list((tmp_path / "elsewhere").iterdir()) == []  # no empty store, no lock file


@pytest.mark.slow  # a process of its own: the command makes the default store's path absolute
def test_resume_from_a_folder_without_the_default_store_names_it_and_creates_none(tmp_path, monkeypatch):
    """`mnist-cnn-train resume=RUN` in an empty folder, with neither tracking.uri nor $MLFLOW_TRACKING_URI:
    the message names the default store of that folder, and no mlflow.db is made there (it was)."""
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    run_id, folder = "0123456789abcdef0123456789abcdef", tmp_path / "empty"
    folder.mkdir()
    out = processes.run([*processes.TRAIN, f"resume={run_id}"], folder)
    (line,) = out.stdout.splitlines()
    assert out.returncode == 2 and out.stderr == "", out.stderr
    assert (
        f"[mnist_cnn][ERROR] - resume={run_id}: run {run_id} was looked for in tracking.uri='sqlite:///{folder}/"
        f"mlflow.db': there is no MLflow store at {folder}/mlflow.db. "
    ) in line
    assert [p.name for p in folder.iterdir()] == ["outputs"]  # Hydra's folder of the command's log, nothing else


def test_a_truncated_checkpoint_in_a_run_is_named_as_its_artifact(tiny_cfg, store_uri, tmp_path):
    """resume=RUN_ID downloads the checkpoint into a temporary folder: the message names the run's
    artifact, which the user can find, not that folder."""
    run_id = killed_in_epoch_2(tiny_cfg(*FAST), store_uri, tmp_path / "out")
    (stored,) = tmp_path.glob(f"mlruns/*/{run_id}/artifacts/checkpoints/last.pt")
    stored.write_bytes(stored.read_bytes()[:200])
    with pytest.raises(CheckpointError) as e:
        resume(tiny_cfg(), run_id)
    assert str(e.value).startswith(f"run {run_id} artifact checkpoints/last.pt cannot be read (")
    assert str(e.value).endswith("): it is truncated or corrupt; use another checkpoint.")


def test_a_run_with_a_fresh_heartbeat_is_refused_and_a_stale_one_resumed(tiny_cfg, store_uri, tmp_path):
    """Two processes must never write one run: RUNNING with a live heartbeat is refused."""
    run_id = killed_in_epoch_2(tiny_cfg(*FAST), store_uri, tmp_path / "out")
    client = MlflowClient(store_uri)
    client.update_run(run_id, status="RUNNING")  # as if another process (our parent, alive) trained it now
    client.set_tag(run_id, PID, str(os.getppid()))
    client.set_tag(run_id, HEARTBEAT, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with pytest.raises(
        CheckpointError, match=r"is RUNNING and its heartbeat is \d+ s old: a process \(pid \d+ on .*\) may still"
    ):
        resume(tiny_cfg(), run_id)
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    client.set_tag(run_id, HEARTBEAT, old.isoformat(timespec="seconds"))  # silent for 10 min: stale
    assert resume(tiny_cfg(), run_id)["test_acc"] > 0.5
    assert only_run(store_uri).info.status == "FINISHED"


def train_in_subprocess(tmp_path, root, uri, *overrides):
    base = (
        "model=bn_cnn",
        "data.val_size=200",
        "trainer.epochs=3",
        "seed=3",
        "tracking.log_model=false",
        "tracking.heartbeat_s=1",
    )
    return processes.train_command(root, uri, *base, *overrides)


@pytest.mark.slow
def test_a_process_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, store_uri):
    """Ctrl-C (SIGINT) stops a real process at a step boundary: exit 130, KILLED with its resume
    command. SIGKILL leaves a RUNNING run that the runs table shows as STALE with its resume command.
    Both resume to the uninterrupted weights."""
    root = write_tiny_mnist(tmp_path / "data", n_train=6000, n_test=200)  # epochs of a second or more
    full = processes.run(train_in_subprocess(tmp_path, root, store_uri, "tracking.run_name=full"), tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    for name, sig in (("ctrl-c", signal.SIGINT), ("kill", signal.SIGKILL)):
        cut = processes.start(train_in_subprocess(tmp_path, root, store_uri, f"tracking.run_name={name}"), tmp_path)
        for line in cut.stdout:
            if "epoch 1/3" in line:  # epoch 2 has begun: stop it half-way
                cut.send_signal(sig)
                break
        output = line + cut.communicate(timeout=60)[0]
        assert cut.returncode == (130 if sig == signal.SIGINT else -9), output[-2000:]
    runs = runs_by_name(store_uri)
    stopped = runs["ctrl-c"]
    assert stopped.info.status == "KILLED" and runs["kill"].info.status == "RUNNING"
    assert (
        stopped.data.tags["resume_command"] == f"mnist-cnn-train resume={stopped.info.run_id} tracking.uri={store_uri}"
    )
    table = processes.run([processes.TRAIN[0], "-m", "mnist_cnn.cli.runs", "--tracking-uri", store_uri], tmp_path)
    kill_id = runs["kill"].info.run_id
    assert "STALE" in next(line for line in table.stdout.splitlines() if line.startswith(kill_id)), table.stdout
    assert f"mnist-cnn-train resume={kill_id} tracking.uri={store_uri}" in table.stdout

    for name in ("ctrl-c", "kill"):
        run_id = runs[name].info.run_id
        assert [s for s, _ in history(store_uri, run_id)["val_acc"]] == [1]  # epoch 2 left no trace
        resumed = processes.run(train_in_subprocess(tmp_path, root, store_uri, f"resume={run_id}"), tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = runs_by_name(store_uri)
    assert set(runs) == {"full", "ctrl-c", "kill"}
    for name in ("ctrl-c", "kill"):
        assert runs[name].info.status == "FINISHED" and runs[name].data.tags["resumed_at_epoch"] == "2"
        assert runs[name].data.tags["weights_sha256"] == runs["full"].data.tags["weights_sha256"]
        assert history(store_uri, runs[name].info.run_id) == history(store_uri, runs["full"].info.run_id)


def killed_run(store_uri: str) -> str:
    client = MlflowClient(store_uri)
    run_id = client.create_run(client.create_experiment("claims")).info.run_id
    client.set_terminated(run_id, "KILLED")
    return run_id


def other_live_process() -> str:
    """The claim of a process that lives on this machine (the test's parent)."""
    return f"{socket.gethostname()} {os.getppid()} {datetime.now(timezone.utc).isoformat(timespec='seconds')}"


def test_a_run_another_live_process_continues_is_refused_naming_it(store_uri):
    run_id = killed_run(store_uri)
    client = MlflowClient(store_uri)
    client.log_param(run_id, f"{names.CLAIM}1", other_live_process())
    with pytest.raises(
        CheckpointError, match=rf"run {run_id} is being continued by another process \(pid {os.getppid()} on "
    ):
        tracking_claim.claim(client, run_id)


def test_of_two_processes_that_continue_a_run_at_once_exactly_one_gets_it(store_uri, monkeypatch):
    """Both read the run before either claimed it; the store takes only the first value of a param."""
    run_id = killed_run(store_uri)
    client = MlflowClient(store_uri)
    before = client.get_run(run_id)  # what the second process saw
    client.log_param(run_id, f"{names.CLAIM}1", other_live_process())  # the first one got there first
    reads = iter([before])
    real = MlflowClient.get_run
    monkeypatch.setattr(MlflowClient, "get_run", lambda self, rid: next(reads, None) or real(self, rid))
    with pytest.raises(CheckpointError, match=rf"pid {os.getppid()} on "):
        tracking_claim.claim(client, run_id)


def test_a_run_whose_last_holder_has_exited_is_claimed_again(store_uri):
    run_id = killed_run(store_uri)
    client = MlflowClient(store_uri)
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is free now
    client.log_param(run_id, f"{names.CLAIM}1", f"{socket.gethostname()} {gone.pid} 2026-01-01T00:00:00+00:00")
    tracking_claim.claim(client, run_id)
    assert client.get_run(run_id).data.params[f"{names.CLAIM}2"].split(" ")[1] == str(os.getpid())


def test_a_claim_from_another_machine_holds_while_the_runs_heartbeat_is_fresh(store_uri):
    """Its pid cannot be asked about from here: the run's heartbeat says whether that process lives."""
    run_id = killed_run(store_uri)
    client = MlflowClient(store_uri)
    client.log_param(run_id, f"{names.CLAIM}1", "elsewhere 4242 2026-01-01T00:00:00+00:00")
    client.update_run(run_id, status="RUNNING")
    beat = {**alive_tags(30), names.HOST: "elsewhere", names.PID: "4242"}  # written there, just now
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in beat.items()])
    with pytest.raises(CheckpointError, match=rf"run {run_id} is being continued by another process \(pid 4242 on "):
        tracking_claim.claim(client, run_id)
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    client.set_tag(run_id, HEARTBEAT, old.isoformat(timespec="seconds"))  # silent for 10 min: that process is gone
    tracking_claim.claim(client, run_id)
    assert client.get_run(run_id).data.params[f"{names.CLAIM}2"].split(" ")[:2] == [
        socket.gethostname(),
        str(os.getpid()),
    ]


@pytest.mark.slow
def test_two_resumes_of_one_killed_run_started_together_leave_one_history(tmp_path, store_uri):
    """Exactly one process continues the run; the other exits 2 naming it, and every epoch is logged once."""
    root = write_tiny_mnist(tmp_path / "data", n_train=3000, n_test=200)
    cut = processes.start(train_in_subprocess(tmp_path, root, store_uri, "tracking.run_name=cut"), tmp_path)
    for line in cut.stdout:
        if "epoch 1/3" in line:
            cut.send_signal(signal.SIGTERM)
            break
    cut.communicate(timeout=60)
    run_id = only_run(store_uri).info.run_id
    both = [
        processes.start(train_in_subprocess(tmp_path, root, store_uri, f"resume={run_id}"), tmp_path) for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert sorted(p.returncode for p in both) == [0, 2], outputs
    refused = outputs[[p.returncode for p in both].index(2)]
    assert f"run {run_id} is being continued by another process (pid " in refused
    run = only_run(store_uri)
    assert run.info.status == "FINISHED"
    assert [step for step, _ in history(store_uri, run_id)["val_acc"]] == [1, 2, 3]
    assert [m.step for m in MlflowClient(store_uri).get_metric_history(run_id, "test_acc")] == [3]
