"""trainer.strategy=ddp: data-parallel training over the processes torchrun starts, one MLflow run
written by rank 0, the same steps as one process with the same global batch, resumable."""

import shlex
import signal
import time

import pytest
import torch
from mlflow import MlflowClient

from mnist_cnn.config.checks import check_config
from mnist_cnn.config.job import JobContext, Torchrun
from mnist_cnn.data.splits import Split, batches, num_batches
from mnist_cnn.errors import ConfigError
from tests.helpers import processes
from tests.helpers.config import make_cfg
from tests.helpers.data import write_tiny_mnist
from tests.helpers.mlflow_store import HISTORY, all_runs, history, only_run, runs
from tests.helpers.processes import ddp_command, torchrun


def numbered_split(n: int) -> Split:
    """A split whose labels are the images' own indices, so a batch says which images it holds."""
    return Split(torch.zeros(n, 28, 28, dtype=torch.uint8), torch.arange(n))


@pytest.mark.parametrize("n, batch_size, world", [(640, 64, 2), (100, 32, 4), (101, 32, 4), (97, 32, 2), (66, 32, 4)])
def test_the_shards_of_a_global_batch_are_disjoint_equal_and_make_up_the_batch(n, batch_size, world):
    """Every rank draws the same permutation; rank r takes index[r::world] of each global batch. A
    last partial batch is cut to a multiple of world (left out when smaller than world)."""
    split = numbered_split(n)

    def epoch_labels(shard=(0, 1)):  # each rank's generator is seeded alike
        return [labels for _, labels in batches(split, batch_size, torch.Generator().manual_seed(7), shard=shard)]

    whole, shards = epoch_labels(), [epoch_labels((rank, world)) for rank in range(world)]
    steps = num_batches(n, batch_size, False, None, world)
    assert all(len(s) == steps for s in shards) and steps == len(whole) - (0 < n % batch_size < world)
    for step in range(steps):
        parts = [s[step] for s in shards]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) > 0  # equal, never empty
        together = torch.cat(parts)
        assert len(set(together.tolist())) == len(together)  # disjoint
        kept = len(whole[step]) - len(whole[step]) % world
        # the batch (its first multiple of world)
        assert sorted(together.tolist()) == sorted(whole[step][:kept].tolist())
    assert num_batches(n, batch_size, False, None) == len(whole)  # one process: unchanged


def test_ddp_outside_torchrun_names_the_torchrun_command(tiny_root, store_uri, tmp_path):
    out = processes.run(
        processes.train_command(tiny_root, store_uri, "trainer.strategy=ddp", "optimizer.lr=0.002"), tmp_path
    )
    console = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in console, console[-2000:]
    assert "trainer.strategy=ddp runs under torchrun" in console
    assert (
        "torchrun --nproc_per_node=2 -m mnist_cnn data.root=" in console
        and "trainer.strategy=ddp optimizer.lr=0.002" in console
    )


def under_torchrun(world: int) -> JobContext:
    return JobContext(torchrun=Torchrun(0, world, 0))


@pytest.mark.parametrize(
    "world, overrides, message",
    [
        (
            "2",
            ["trainer.strategy=ddp", "data.batch_size=65"],
            "data.batch_size=65 does not divide by the 2 processes torchrun started",
        ),
        ("4", ["trainer.strategy=ddp", "data.batch_size=50"], "data.batch_size=50 does not divide by the 4 processes"),
        ("2", [], "torchrun started 2 processes but trainer.strategy=single"),
    ],
)
def test_under_torchrun_a_batch_that_does_not_split_evenly_or_a_single_strategy_is_refused(world, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg(overrides), under_torchrun(int(world)))


def test_under_torchrun_a_divisible_batch_and_a_single_process_pass():
    check_config(make_cfg(["trainer.strategy=ddp", "data.batch_size=64"]), under_torchrun(2))
    # a resume keeps its run's strategy: checked on it
    check_config(make_cfg(["resume=0123456789abcdef0123456789abcdef"]), under_torchrun(2))
    check_config(make_cfg([]), under_torchrun(1))


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [2, 1])
def test_ddp_on_cpu_processes_is_one_mlflow_run_written_once(tiny_root, store_uri, tmp_path, nproc):
    out = processes.run(ddp_command(nproc, tiny_root, store_uri, "trainer.epochs=2"), tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = only_run(store_uri)
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == str(nproc) and run.data.params["trainer.strategy"] == "ddp"
    assert {"weights_sha256", "config_sha256", "data_sha256"} <= set(run.data.tags)
    client = MlflowClient(store_uri)
    for key in (*HISTORY, "lr", "epoch_time_s", "samples_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key  # each epoch once
    assert run.data.metrics["test_acc"] > 0.5
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    console = out.stdout + out.stderr
    # rank 0 alone tells the story
    assert console.count("epoch 1/2") == 1 and console.count("model seed_cnn on cpu") == 1


@pytest.mark.slow
def test_ddp_on_two_processes_learns_what_one_process_learns_from_the_same_global_batches(
    real_root, store_uri, tmp_path
):
    """The same optimizer steps (global batch 64, 200 steps) on the real MNIST, up to float reduction order."""
    settings = (
        f"data.root={real_root}",
        f"tracking.uri={store_uri}",
        "trainer.epochs=1",
        "trainer.limit_batches=200",
        "data.batch_size=64",
        "trainer.progress=false",
        "tracking.log_model=false",
        "seed=1",
    )
    done = {}
    for name, command in (("single", processes.TRAIN), ("ddp", torchrun(2, "trainer.strategy=ddp"))):
        started = time.perf_counter()
        out = processes.run([*command, *settings, f"tracking.run_name={name}"], tmp_path, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        done[name] = (time.perf_counter() - started, next(r for r in runs(store_uri) if r.info.run_name == name))
    for name, (wall, run) in done.items():
        m = run.data.metrics
        print(
            f"{name}: test_acc {m['test_acc']:.4f}  train_loss {m['train_loss']:.6f}  val_acc {m['val_acc']:.4f}  "
            f"train_time_s {m['train_time_s']:.1f}  wall {wall:.1f} s  world_size {run.data.tags['world_size']}"
        )
    single, ddp = done["single"][1].data.metrics, done["ddp"][1].data.metrics
    assert abs(single["test_acc"] - ddp["test_acc"]) <= 0.01
    # the same steps, not just as good a model
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-3)


@pytest.mark.slow
def test_a_ddp_run_stopped_by_sigterm_resumes_under_torchrun_to_the_uninterrupted_result(tmp_path, store_uri):
    """torchrun passes SIGTERM to every rank: they stop at the same step, rank 0 ends the run KILLED
    after epoch 1; `torchrun ... resume=RUN_ID` continues the same run to what an uninterrupted run gives."""
    root = write_tiny_mnist(tmp_path / "data", n_train=6000, n_test=200)  # epochs of a second or more
    base = ("trainer.epochs=3", "seed=3", "tracking.log_model=false", "data.val_size=200")
    full = processes.run(ddp_command(2, root, store_uri, *base, "tracking.run_name=full"), tmp_path, timeout=300)
    assert full.returncode == 0, full.stdout[-3000:]
    cut = processes.start(ddp_command(2, root, store_uri, *base, "tracking.run_name=cut"), tmp_path)
    for line in cut.stdout:
        if "epoch 1/3" in line:  # epoch 2 has begun: stop it half-way
            cut.send_signal(signal.SIGTERM)  # what Ctrl-C or Slurm does to torchrun, which passes it to every rank
            signalled = time.monotonic()
            break
    output = line + cut.communicate(timeout=120)[0]
    stopped_in = time.monotonic() - signalled
    assert cut.returncode != 0, output[-3000:]
    # no rank hung: torchrun kills after 30 s
    assert stopped_in < 20 and "forcefully exiting" not in output, output[-3000:]
    run = next(r for r in runs(store_uri) if r.info.run_name == "cut")
    assert run.info.status == "KILLED", output[-3000:]
    assert [s for s, _ in history(store_uri, run.info.run_id)["val_acc"]] == [1]  # epoch 2 left no trace

    again = processes.run(
        torchrun(2, f"resume={run.info.run_id}", f"tracking.uri={store_uri}", f"data.root={root}"), tmp_path
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    by_name = {r.info.run_name: r for r in runs(store_uri)}
    assert set(by_name) == {"full", "cut"}
    resumed = by_name["cut"]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_at_epoch"] == "2"
    assert resumed.data.tags["world_size"] == "2"
    # each epoch once, same numbers
    assert history(store_uri, resumed.info.run_id) == history(store_uri, by_name["full"].info.run_id)
    assert resumed.data.tags["weights_sha256"] == by_name["full"].data.tags["weights_sha256"]


@pytest.mark.slow
def test_a_failure_on_rank_0_stops_every_rank_with_one_message(tiny_root, store_uri, tmp_path):
    """Rank 0 resolves a resume alone; when it fails, the other ranks leave quietly instead of waiting."""
    missing = "0123456789abcdef0123456789abcdef"
    out = processes.run(
        torchrun(2, f"resume={missing}", f"tracking.uri={store_uri}", f"data.root={tiny_root}"), tmp_path, timeout=120
    )
    assert out.returncode != 0
    console = out.stdout + out.stderr
    assert console.count(f"no run {missing} in this tracking store") == 1, console[-3000:]


@pytest.mark.slow
def test_a_sweep_over_the_strategy_fails_its_ddp_job_alone(tiny_root, store_uri, tmp_path):
    """A multirun's jobs each train in one process: the job with trainer.strategy=ddp fails at once,
    recorded FAILED, and the other trains (ddp for every job is refused before the sweep: test_cli)."""
    command = processes.train_command(
        tiny_root, store_uri, "trainer.strategy=single,ddp", "trainer.limit_batches=2", multirun=True
    )
    out = processes.run(command, tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    children = [r for r in all_runs(store_uri) if "mlflow.parentRunId" in r.data.tags]
    jobs = {
        next(o for o in shlex.split(r.data.tags["hydra_overrides"]) if o.startswith("trainer.strategy=")): r
        for r in children
    }
    single, ddp = jobs.pop("trainer.strategy=single"), jobs.pop("trainer.strategy=ddp")
    assert (single.info.status, ddp.info.status, jobs) == ("FINISHED", "FAILED", {})
    assert "trainer.strategy=ddp runs under torchrun, one run at a time" in ddp.data.tags["error"]
