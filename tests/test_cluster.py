"""The real engines: a single-node Slurm cluster and a PostgreSQL-backed MLflow server with
basic-auth, both started by `make test-cluster` (deploy/cluster.sh), which exports:
MNIST_CNN_CLUSTER_URI (the server), MLFLOW_TRACKING_USERNAME/PASSWORD, SLURM_CONF."""

import os
import subprocess
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from mnist_cnn.engine.checkpoint import load_checkpoint
from tests.helpers import processes
from tests.helpers.config import TINY

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def uri() -> str:
    if "MNIST_CNN_CLUSTER_URI" not in os.environ:
        pytest.fail("the cluster tests need the services `make test-cluster` starts; run that instead.")
    return os.environ["MNIST_CNN_CLUSTER_URI"]


@pytest.fixture
def experiment() -> str:
    return f"cluster-{uuid.uuid4().hex[:8]}"  # the server outlives each test: an experiment of its own


def sweep(folder, data_root, experiment, *overrides, timeout=900):
    """`mnist-cnn-train -m ... tracking=server` against the cluster's server; returns (parent, children)."""
    command = [
        *processes.TRAIN,
        "-m",
        f"data.root={data_root}",
        *TINY,
        "tracking=server",
        f"tracking.experiment={experiment}",
        *overrides,
    ]
    out = processes.run(command, folder, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return family(experiment)


def family(experiment: str):
    client = MlflowClient()
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], [r for r in found if r is not parents[0]]


SLURM = (
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
)


def test_a_slurm_sweep_logs_every_job_to_the_team_server(uri, experiment, tiny_root, tmp_path):
    parent, children = sweep(tmp_path, tiny_root, experiment, *SLURM, "seed=1,2,3,4", "trainer.epochs=2")
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_finished"] == 4
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2", "3", "4"]
    client = MlflowClient()
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["slurm_job_id"]  # each ran as a Slurm job
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2]
    one = children[0].info.run_id  # artifacts come back through the server, no shared disk needed
    checkpoint = load_checkpoint(Path(client.download_artifacts(one, "checkpoints/last.pt", str(tmp_path))))
    assert checkpoint["epoch"] == 2 and checkpoint["run_id"] == one
    model = mlflow.pytorch.load_model(f"runs:/{one}/model")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_a_job_requeued_mid_run_continues_its_own_run(uri, experiment, real_root, tmp_path):
    """`scontrol requeue` while epoch 2 of 4 trains: SIGTERM, Slurm holds the job, restarts it; it
    continues the same run from its checkpoint: one FINISHED run, no epoch twice."""
    command = [
        *processes.TRAIN,
        "-m",
        f"data.root={real_root}",
        "trainer.progress=false",
        "tracking=server",
        f"tracking.experiment={experiment}",
        *SLURM,
        "seed=1",
        "trainer.epochs=4",
        "trainer.limit_batches=300",
        "tracking.log_model=false",
    ]
    job = processes.start(command, tmp_path)
    client, run = MlflowClient(), None
    deadline = time.time() + 300
    while time.time() < deadline and run is None:
        time.sleep(1)
        exp = client.get_experiment_by_name(experiment)
        children = client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''") if exp else []
        if children and client.get_metric_history(children[0].info.run_id, "val_acc"):
            run = children[0]
    assert run is not None, "the job never finished its first epoch"
    subprocess.run(["scontrol", "requeue", run.data.tags["slurm_job_id"]], check=True)
    output = job.communicate(timeout=900)[0]
    assert job.returncode == 0, output[-4000:]

    parent, children = family(experiment)
    assert [c.info.run_id for c in children] == [run.info.run_id]  # the same run, no duplicate
    again = children[0]
    assert again.info.status == "FINISHED" and int(again.data.tags["resumed_at_epoch"]) >= 2
    history = [(m.step, round(m.value, 4)) for m in client.get_metric_history(run.info.run_id, "val_acc")]
    print(
        f"requeued run {run.info.run_id}: resumed_at_epoch {again.data.tags['resumed_at_epoch']}, val_acc history "
        f"{history}"
    )
    assert [step for step, _ in history] == [1, 2, 3, 4]


def test_eight_jobs_at_once_lose_and_duplicate_nothing(uri, experiment, tiny_root, tmp_path):
    seeds = ",".join(str(s) for s in range(1, 9))
    parent, children = sweep(
        tmp_path,
        tiny_root,
        experiment,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=8",
        f"seed={seeds}",
        "trainer.epochs=2",
    )
    assert sorted(int(c.data.params["seed"]) for c in children) == list(range(1, 9))
    client = MlflowClient()
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("train_loss", "val_acc"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [1, 2]
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"checkpoints", "config.yaml", "plots"}
        assert child.data.tags["model_uri"].startswith("models:/m-")
    assert parent.data.metrics["n_jobs"] == 8 and parent.data.metrics["n_finished"] == 8


def test_a_request_no_node_can_hold_is_refused_before_anything_is_submitted(uri, experiment, tiny_root, tmp_path):
    """Slurm itself would queue the jobs and leave them pending; sinfo says this node has fewer CPUs."""
    cpus = int(subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
    command = [*processes.TRAIN, "-m", f"data.root={tiny_root}", *TINY, "tracking=server"]
    command += [f"tracking.experiment={experiment}", *(o for o in SLURM if "cpus_per_task" not in o)]
    command += [f"hydra.launcher.cpus_per_task={cpus + 1}", "seed=1,2"]
    out = processes.run(command, tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        f"mnist-cnn-train: hydra.launcher.cpus_per_task={cpus + 1} (times tasks_per_node=1) asks for {cpus + 1} CPUs, "
        f"but no node of partition 'debug' has more than {cpus}; the jobs would never start. Lower "
        f"hydra.launcher.cpus_per_task to {cpus} or less."
    ]
    assert MlflowClient().get_experiment_by_name(experiment) is None and not (tmp_path / "multirun").exists()


def test_a_wrong_password_is_refused_and_written_nowhere(uri, experiment, tiny_root, tmp_path):
    command = [
        *processes.TRAIN,
        f"data.root={tiny_root}",
        *TINY,
        "tracking=server",
        f"tracking.experiment={experiment}",
    ]
    out = processes.run(command, tmp_path, env={"MLFLOW_TRACKING_PASSWORD": "not-the-password"})
    assert out.returncode == 2, out.stderr[-3000:]
    said = out.stdout + out.stderr
    assert "the server refused these credentials (401 not authenticated)" in said and "not-the-password" not in said
    assert MlflowClient().get_experiment_by_name(experiment) is None  # nothing was written


def test_ddp_on_two_cpu_processes_is_one_run_as_accurate_as_one_process(uri, experiment, real_root, tmp_path):
    """torchrun with 2 processes (gloo) and one process, the same global batch of 64 on the real
    MNIST: one run each on the server, test accuracies within 1 point."""
    same = [
        f"data.root={real_root}",
        "trainer.progress=false",
        "tracking=server",
        f"tracking.experiment={experiment}",
        "trainer.epochs=1",
        "trainer.limit_batches=200",
        "data.batch_size=64",
        "tracking.log_model=false",
    ]
    for name, command in (("ddp", processes.torchrun(2, "trainer.strategy=ddp")), ("single", processes.TRAIN)):
        out = processes.run([*command, *same, f"tracking.run_name={name}"], tmp_path, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient()
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}
    assert sorted(runs) == ["ddp", "single"]  # one run for the two processes
    ddp, single = runs["ddp"], runs["single"]
    assert ddp.data.tags["world_size"] == "2" and ddp.info.status == "FINISHED"
    print(f"test_acc ddp {ddp.data.metrics['test_acc']:.4f} single {single.data.metrics['test_acc']:.4f}")
    assert abs(ddp.data.metrics["test_acc"] - single.data.metrics["test_acc"]) <= 0.01
