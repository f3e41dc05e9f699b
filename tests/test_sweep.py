"""Multirun sweeps: one MLflow parent per sweep, every job a child, across launchers and processes;
the runs table."""

import json
import os
import pickle
import shlex
import sqlite3
import time

import optuna
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from mnist_cnn.cli import runs
from mnist_cnn.config import tree
from mnist_cnn.runner import train
from mnist_cnn.sweep.callback import shared_config_error
from mnist_cnn.sweep.compose import ComposedOnce
from mnist_cnn.sweep.study import open_storage
from mnist_cnn.tracking.run_names import run_name
from tests.helpers import processes
from tests.helpers.mlflow_store import only_run, runs_by_name
from tests.helpers.mlflow_store import runs as runs_in
from tests.helpers.searches import sweep_config

FAST = ("trainer.limit_batches=3", "tracking.log_model=false")


def sweep(folder, root, uri, *overrides):
    """Run `mnist-cnn-train -m OVERRIDES` on tiny data from `folder`; returns (parent, children)."""
    out = processes.run(processes.train_command(root, uri, *FAST, *overrides, multirun=True), folder)
    assert out.returncode == 0, out.stderr[-3000:]
    found = runs_in(uri)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(found) - 1  # no stray run outside the sweep
    return parents[0], children


def assert_four_good_children(parent, children):
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    for child in children:
        assert {"train_loss", "val_acc", "test_acc", "lr", "epoch_time_s"} <= set(child.data.metrics)
    assert sorted(c.info.run_name for c in children) == [
        "lr=0.001,seed=1",
        "lr=0.001,seed=2",
        "lr=0.003,seed=1",
        "lr=0.003,seed=2",
    ]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["n_jobs"] == 4 and parent.data.metrics["n_failed"] == 0
    best = max(children, key=lambda c: c.data.metrics["val_acc"])
    assert parent.data.metrics["best_val_acc"] == best.data.metrics["val_acc"]
    assert parent.data.tags["best_run_id"] in {
        c.info.run_id for c in children if c.data.metrics["val_acc"] == best.data.metrics["val_acc"]
    }


@pytest.mark.slow
def test_parallel_joblib_sweep_is_one_parent_with_four_children(tiny_root, store_uri, tmp_path, capsys):
    parent, children = sweep(
        tmp_path,
        tiny_root,
        store_uri,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "optimizer.lr=1e-3,3e-3",
        "seed=1,2",
    )
    ended = time.time()
    assert ended - parent.info.end_time / 1000 < 60  # with the sweep, not after the workers' 300 s idle timeout
    assert_four_good_children(parent, children)
    assert parent.data.tags["launcher"] == "JoblibLauncher" and parent.data.tags["sweeper"] == "BasicSweeper"
    assert "optimizer.lr=1e-3,3e-3 seed=1,2" in parent.data.tags["sweep_overrides"]
    assert all("optimizer.lr=" in c.data.tags["hydra_overrides"] for c in children)
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))  # 2 workers side by side: half the cores each
    assert {c.data.params["torch_threads"] for c in children} == {share}

    runs.main(["--tracking-uri", store_uri, "--sweep", parent.info.run_id, "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}  # the parent is left out


@pytest.mark.slow
def test_submitit_local_sweep_is_one_parent_with_four_children(tiny_root, store_uri, tmp_path):
    parent, children = sweep(
        tmp_path, tiny_root, store_uri, "hydra/launcher=submitit_local", "optimizer.lr=1e-3,3e-3", "seed=1,2"
    )
    assert_four_good_children(parent, children)
    share = str(max(1, len(os.sched_getaffinity(0)) // 4))  # the 4 jobs start together: a quarter of the cores each
    assert {c.data.params["torch_threads"] for c in children} == {share}


@pytest.mark.slow
def test_optuna_search_survives_failed_trials_and_names_the_best(tiny_root, store_uri, tmp_path):
    """Width 0 is an impossible config and lr 1e6 diverges: both trials are FAILED runs, the study
    goes on to its 6 trials (4 configs: a trial with a finished trial's values shares its run, a
    failed one runs again)."""
    parent, children = sweep(
        tmp_path,
        tiny_root,
        store_uri,
        "hparams_search=lr_batch",
        "hydra.sweeper.n_trials=6",
        "optimizer=sgd",
        "optimizer.lr=choice(0.05, 1e6)",
        "model.layers.0.out_channels=choice(0, 8)",
    )
    study = optuna.load_study(
        study_name=parent.data.tags["optuna_study"], storage=open_storage(str(tmp_path / "mlflow.db.optuna.journal"))
    )
    assert len(study.trials) == 6 and parent.data.metrics["n_jobs"] == len(children) <= 6
    failed = [c for c in children if c.info.status == "FAILED"]
    assert parent.data.metrics["n_failed"] == len(failed) > 0
    causes = ("ConfigError: model.layers[0] block: out_channels must be a positive integer", "DivergedError: ")
    assert all(c.data.tags["error"].startswith(causes) for c in failed), [c.data.tags["error"] for c in failed]
    good = [c for c in children if c.info.status == "FINISHED"]
    assert good, "with seed 123 the sampler picks at least one workable trial"
    top = max(c.data.metrics["val_acc"] for c in good)  # trials may repeat a config: a tie
    assert parent.data.tags["best_run_id"] in {c.info.run_id for c in good if c.data.metrics["val_acc"] == top}
    assert parent.data.tags["sweeper"] == "OptunaSweeper"


def test_a_single_run_has_no_parent(tiny_cfg, store_uri, tmp_path):
    train.run(tiny_cfg(*FAST), tmp_path / "out")
    assert "mlflow.parentRunId" not in only_run(store_uri).data.tags


def test_runs_table_sorts_and_formats_runs(tiny_cfg, store_uri, tmp_path, capsys):
    for lr in ("0.001", "0.003", "0.0001"):
        train.run(tiny_cfg(*FAST, f"optimizer.lr={lr}", f"tracking.run_name=run{lr}"), tmp_path / lr)
    made = {r.info.run_name: r for r in runs_in(store_uri)}
    capsys.readouterr()  # what training printed

    runs.main(["--tracking-uri", store_uri, "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    accs = [r["val_acc"] for r in rows]
    assert len(rows) == 3 and accs == sorted(accs, reverse=True)
    assert set(rows[0]) >= {"name", "status", "overrides", "val_acc", "test_acc", "epochs", "wall_s"}

    runs.main(["--tracking-uri", store_uri, "--sort", "train_loss", "--ascending", "--top", "2", "--format", "csv"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("run_id,name,status,overrides,val_acc,test_acc,epochs,wall_s,train_loss")
    losses = [float(line.rsplit(",", 1)[1]) for line in lines[1:]]
    assert (
        len(losses) == 2
        and losses == sorted(losses)
        and losses[0] == min(r.data.metrics["train_loss"] for r in made.values())
    )

    runs.main(["--tracking-uri", store_uri])
    table = capsys.readouterr().out
    assert all(r.info.run_id in table for r in made.values()) and "FINISHED" in table and "STALE" not in table


def test_runs_table_shows_runs_without_the_default_metric_and_says_so(store_uri, capsys):
    """Runs with no metric to sort by (like a sweep whose jobs all failed): listed all the same."""
    client = MlflowClient(store_uri)
    client.create_run(client.create_experiment("mnist"), tags={"mlflow.runName": "bare"})
    runs.main(["--tracking-uri", store_uri])
    out = capsys.readouterr()
    assert "bare" in out.out and out.err == "mnist-cnn-runs: no run has the metric 'val_acc' (these do: none).\n"


def test_runs_without_a_validation_split_are_ranked_by_a_metric_every_run_has_and_the_header_says_which(
    tiny_cfg, store_uri, tmp_path, capsys
):
    """--top N, best first: val_acc would put the run without a validation split last, whatever its
    accuracy; test_acc, which both runs log, ranks it first here (it trains ten batches, the other run
    one at a learning rate that leaves it where it started), and the line above the table names it."""
    for name, overrides in [
        ("no_val", ["data.val_size=0", "objective.metrics=[test_acc]", "trainer.limit_batches=10"]),
        ("val", ["trainer.limit_batches=1", "optimizer.lr=1e-9"]),
    ]:
        train.run(tiny_cfg(*FAST, *overrides, f"tracking.run_name={name}"), tmp_path / name)
    made = runs_by_name(store_uri)
    assert made["no_val"].data.metrics["test_acc"] > made["val"].data.metrics["test_acc"]
    capsys.readouterr()
    runs.main(["--tracking-uri", store_uri, "--top", "2"])
    header, *table = capsys.readouterr().out.splitlines()
    assert header == "sorted by test_acc, largest first (a metric every run here logged)"
    assert [line.split()[1] for line in table[1:]] == ["no_val", "val"]


def test_runs_table_rejects_an_unknown_experiment_with_exit_code_2(store_uri, capsys):
    with pytest.raises(SystemExit) as e:
        runs.main(["--tracking-uri", store_uri, "--experiment", "nope"])
    assert e.value.code == 2 and "no experiment 'nope'" in capsys.readouterr().err


def test_runs_table_refuses_a_metric_no_run_has_and_a_count_below_one(tiny_cfg, store_uri, tmp_path, capsys):
    train.run(tiny_cfg(*FAST), tmp_path / "out")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        runs.main(["--tracking-uri", store_uri, "--sort", "val_accuracy"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--sort val_accuracy: no run here has that metric; these do: " in err
    assert "val_acc," in err and "Traceback" not in err
    for top in ("-1", "0", "two"):
        with pytest.raises(SystemExit) as e:
            runs.main(["--tracking-uri", store_uri, "--top", top])
        assert (
            e.value.code == 2
            and f"argument --top: {top!r} is not a number of runs; give 1 or more" in capsys.readouterr().err
        )


def test_run_names_come_from_the_overrides_that_matter():
    overrides = [
        "optimizer.lr=0.003",
        "data.batch_size=256",
        "data.root=/x",
        "tracking.uri=sqlite:///y.db",
        "model.layers.0.out_channels=16",
    ]
    assert run_name(overrides) == "lr=0.003,bs=256,l0.ch=16"
    assert run_name(overrides, only=["data.batch_size"]) == "bs=256"
    assert run_name(["data.root=/x"]) is None
    assert (
        run_name(["optimizer.lr=0.0024713734184878826", "optimizer=sgd", "seed=1"])
        == "lr=0.002471,optimizer=sgd,seed=1"
    )


def test_group_seeds_averages_each_configuration_over_its_seeds(tiny_cfg, store_uri, tmp_path, capsys):
    for lr in ("0.001", "0.003"):
        for seed in ("1", "2"):
            train.run(tiny_cfg(*FAST, f"optimizer.lr={lr}", f"seed={seed}"), tmp_path / f"{lr}-{seed}")
    made = runs_in(store_uri)
    capsys.readouterr()

    runs.main(["--tracking-uri", store_uri, "--group-seeds", "--format", "json"])
    rows = {row["config"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"lr=0.001", "lr=0.003"}  # named after what differs apart from the seed
    for lr, row in rows.items():
        group = [r for r in made if r.data.params["optimizer.lr"] == lr.partition("=")[2]]
        for metric in ("val_acc", "test_acc"):
            values = [r.data.metrics[metric] for r in group]
            mean = sum(values) / 2
            assert row["n"] == 2 and row[f"{metric}_mean"] == pytest.approx(mean)
            # sample std, n-1 = 1
            assert row[f"{metric}_std"] == pytest.approx((sum((v - mean) ** 2 for v in values)) ** 0.5)

    runs.main(["--tracking-uri", store_uri, "--group-seeds"])
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "config",
        "n",
        "val_acc_mean",
        "val_acc_std",
        "test_acc_mean",
        "test_acc_std",
    ]


@pytest.mark.slow
def test_a_registry_that_refuses_the_champion_keeps_the_report_and_fails_the_command(tiny_root, store_uri, tmp_path):
    """The champion is registered after the report: a store that refuses it (here a trigger that
    aborts every new registered model) leaves the counts, summary and figures on the parent, an
    error tag, and exit 3 with the command that registers it later."""
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON registered_models BEGIN SELECT RAISE(ABORT, 'no new models'); END"
        )
    command = processes.train_command(
        tiny_root, store_uri, "trainer.limit_batches=3", "tracking.register_as=digits", "seed=1,2", multirun=True
    )
    out = processes.run(command, tmp_path)
    assert out.returncode == 3, out.stderr[-3000:]
    parent = next(r for r in runs_in(store_uri) if "mlflow.parentRunId" not in r.data.tags)
    last = out.stderr.strip().splitlines()
    error = parent.data.tags["champion_error"]  # what MLflow said when the insert was aborted
    assert last[-2] == (
        f"mnist-cnn-train: the sweep's report is on its parent run {parent.info.run_id}, but registering its champion "
        f"as 'digits' failed ({error}). Once the store takes it, register it with:"
    )
    assert last[-1] == f"  mnist-cnn-train -m resume_sweep={parent.info.run_id} tracking.uri={store_uri}"
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_jobs"] == 2
    assert error.startswith("MlflowException: ") and "champion" not in parent.data.tags
    artifacts = {a.path for a in MlflowClient(store_uri).list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/summary.csv", "sweep/parallel_coordinates.png", "sweep/pareto.png"} <= artifacts
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the store takes new models again: the hint works
        db.execute("DROP TRIGGER refuse")
    again = processes.run([*processes.TRAIN, *shlex.split(last[-1])[1:]], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    parent = MlflowClient(store_uri).get_run(parent.info.run_id)
    assert parent.data.tags["champion"] == "models:/digits/1" and "champion_error" not in parent.data.tags


@pytest.mark.parametrize(
    "overrides,swept,shared",
    [
        (["trainer.strategy=ddp"], ["seed"], "trainer.strategy=ddp runs under torchrun"),
        (["optimizer=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"], ["optimizer.lr"], "optimizer.nesterov"),
        (["optimizer=sgd", "optimizer.nesterov=true", "optimizer.momentum=0"], ["optimizer.momentum"], None),
        (["optimizer.lr=-1"], ["optimizer.lr"], None),
        (["optimizer.lr=-1"], ["optimizer"], None),  # a group's option varies every key in it
        (["model.layers.0.kernel_size=29"], ["seed"], "model.layers[1] block: input is 1x1"),
        (["model.layers.0.kernel_size=29"], ["model.layers.2.out_features"], None),  # each layer shapes the next
        ([], ["seed"], None),
    ],
)
def test_a_sweep_refuses_only_the_config_errors_that_name_no_key_it_varies(overrides, swept, shared):
    """The sweep's own config holds the swept keys at their defaults: an error there that names a
    varied key may not be every job's, so the jobs decide; any other would fail each of them."""
    error = shared_config_error(tree.compose(overrides), swept)
    assert (None if error is None else str(error)[: len(shared)]) == shared


@pytest.mark.slow
def test_the_runs_table_shows_an_override_with_spaces_whole(tiny_root, store_uri, tmp_path, capsys):
    """`optimizer.betas=[0.9, 0.99]` is one shell word: recorded shell-quoted, listed whole."""
    out = processes.run(processes.train_command(tiny_root, store_uri, *FAST, "optimizer.betas=[0.9, 0.99]"), tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "'optimizer.betas=[0.9, 0.99]'" in only_run(store_uri).data.tags["hydra_overrides"]
    runs.main(["--tracking-uri", store_uri, "--format", "json"])
    assert json.loads(capsys.readouterr().out)[0]["overrides"].endswith(",limit_batches=3,betas=[0.9, 0.99]")


def test_two_sweeps_composed_in_one_second_name_two_sweep_folders():
    """Hydra's default folder, `multirun/DATE/HH-MM-SS`, was the same for two sweeps started in one
    second from one folder (Hydra issues 1607, 1817): their jobs wrote into each other's folders
    and the second sweep's file replaced the first's. Composed one just after the other, as two
    commands started at once are, the two configs name two folders."""
    first, second = (sweep_config(None, "seed=1").hydra.sweep.dir for _ in range(2))
    assert first != second and first.startswith("multirun/")


@pytest.mark.slow
def test_two_sweeps_started_at_once_from_one_folder_keep_their_own_sweep_folders(tiny_root, tmp_path):
    command = processes.train_command(
        tiny_root, "sqlite:///unused.db", "tracking.enabled=false", "seed=1,2", multirun=True
    )
    both = [processes.start(command, tmp_path) for _ in range(2)]
    for job in both:
        output = job.communicate(timeout=300)[0]
        assert job.returncode == 0, output[-3000:]
    (day,) = (tmp_path / "multirun").iterdir()
    folders = sorted(day.iterdir())
    assert len(folders) == 2 and all(sorted(p.name for p in f.glob("[0-9]")) == ["0", "1"] for f in folders)


class CountingLoader:
    """A stand-in for Hydra's config loader: each job's config is its overrides; counts compositions."""

    def __init__(self):
        self.composed = []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.composed.append(tuple(sweep_overrides))
        return OmegaConf.create({"overrides": list(sweep_overrides)})


def test_the_basic_sweeper_hands_the_launcher_each_config_it_composed_to_check_it():
    """Hydra's basic sweeper composes each job to check it, then its basic launcher composed it
    again; the launcher now gets the sweeper's, and a worker process (joblib, submitit) none."""
    loader = CountingLoader()
    once = ComposedOnce(loader)
    for job in (["seed=1"], ["seed=2"]):
        once.compose(OmegaConf.create(), job)
    assert once.load_sweep_config(OmegaConf.create(), ["seed=2"]).overrides == ["seed=2"]
    assert once.load_sweep_config(OmegaConf.create(), ["seed=1"]).overrides == ["seed=1"]
    assert loader.composed == [("seed=1",), ("seed=2",)]  # each once
    once.load_sweep_config(OmegaConf.create(), ["seed=1"])  # asked again: composed again, not kept forever
    assert loader.composed[-1] == ("seed=1",) and not once.composed
    once.compose(OmegaConf.create(), ["seed=3"])
    assert pickle.loads(pickle.dumps(once)).composed == {}  # what a launcher sends its workers
    once.keeping = False  # a launcher that composes in its workers (joblib, submitit): nothing kept for it
    once.compose(OmegaConf.create(), ["seed=4"])
    assert ("seed=4",) not in once.composed and loader.composed[-1] == ("seed=4",)


def test_the_default_sweeper_is_the_basic_one_that_composes_once_and_hydra_basic_names_it():
    for overrides in ((), ("hydra/sweeper=basic",)):
        assert sweep_config(None, *overrides).hydra.sweeper == {
            "_target_": "hydra_plugins.mnist_cnn_sweeper.BasicSweeper",
            "max_batch_size": None,
            "params": None,
        }


@pytest.mark.slow
def test_a_job_of_a_grid_that_cannot_compose_still_fails_the_sweep_before_its_first_job(tiny_root, store_uri, tmp_path):
    """The third job's value is not an int: Hydra's message, exit 2, and no job ran (the parent, opened
    as the sweep started, ends KILLED with n_jobs 0)."""
    out = processes.run(processes.train_command(tiny_root, store_uri, *FAST, "seed=1,2,abc", multirun=True), tmp_path)
    assert out.returncode == 2 and "Value 'abc' of type 'str' could not be converted to Integer" in out.stderr
    (parent,) = runs_in(store_uri)
    assert parent.info.status == "KILLED" and parent.data.metrics["n_jobs"] == 0
