"""The commands as a user runs them: `python -m mnist_cnn` is `mnist-cnn-train`; bad input is one
clear line and exit code 2, before anything is recorded; configs are checked before torch loads."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_cnn.config.tree import CONF_DIR, EXPERIMENTS_DIR
from tests.helpers import processes
from tests.helpers.mlflow_store import all_runs


def test_config_checks_run_before_torch_or_mlflow_is_imported(tmp_path):
    """A bad config is reported within about a second: the checks need neither torch nor MLflow."""
    code = (
        "import sys, mnist_cnn.cli.train, mnist_cnn.config.checks, mnist_cnn.sweep.callback; "
        "print(sorted({'torch', 'mlflow', 'torchvision'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.layers.1.kernel_size=17"],
            "model.layers[1] block: input is 14x14 (padding 1), kernel_size 17 does not fit",
        ),
        (["+trainer.epoch=2"], "trainer.epoch: not a key of TrainerConfig (did you mean epochs?"),
        (["optimizer.lr=inf"], "optimizer.lr must be > 0 (and finite), got inf."),
        (["tracking.register_as=a/b"], "tracking.register_as='a/b': MLflow's model registry refuses this name"),
        (["resume="], "resume= is empty: give a run id or a checkpoint file, or leave resume out."),
        (
            ["hydra/launcher=joblib"],
            "hydra/launcher=joblib launches the jobs of a sweep; add -m (--multirun), or drop it to train here.",
        ),
    ],
    ids=["impossible-model", "added-key", "infinite-lr", "unregistrable-name", "empty-resume", "launcher-without-m"],
)
def test_a_bad_config_is_one_message_exit_2_and_no_run(tiny_root, store_uri, tmp_path, overrides, message):
    """All before torch or MLflow is imported: `python -X importtime` lists every module the command imports."""
    command = processes.train_command(tiny_root, store_uri, *overrides)
    out = processes.run([command[0], "-X", "importtime", *command[1:]], tmp_path)
    assert out.returncode == 2
    assert message in out.stderr + out.stdout and "Traceback" not in out.stderr
    assert all_runs(store_uri) == []  # the store was never written
    imported = {line.rpartition("|")[2].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "mnist_cnn.config.checks" in imported and not {"torch", "mlflow"} & imported


def test_an_override_hydra_cannot_compose_is_exit_2_too(tiny_root, store_uri, tmp_path):
    out = processes.run(
        processes.train_command(tiny_root, store_uri, "optimizer=adam", "optimizer.momentum=0.9"), tmp_path
    )
    assert out.returncode == 2 and out.stderr.splitlines() == [
        "mnist-cnn-train: optimizer.momentum: not a key of AdamConfig (its keys: name, lr, weight_decay, betas)."
    ]
    assert all_runs(store_uri) == []


def _with_config_dir(folder: Path, command: list) -> list:
    """`command` with `--config-dir FOLDER` before its overrides, where Hydra's parser takes it."""
    return [*command[: len(processes.TRAIN)], "--config-dir", str(folder), *command[len(processes.TRAIN) :]]


def _user_configs(tmp_path: Path, files: dict) -> Path:
    """A user's folder of configs, tmp_path/conf, holding `files` ({path in it: text})."""
    configs = tmp_path / "conf"
    for name, text in files.items():
        (configs / name).parent.mkdir(parents=True, exist_ok=True)
        (configs / name).write_text(text)
    return configs


def _train_with(configs: Path, tiny_root: Path, store_uri: str, override: str, tmp_path: Path):
    """`mnist-cnn-train --config-dir CONFIGS OVERRIDE` on tiny data, as it ended."""
    return processes.run(_with_config_dir(configs, processes.train_command(tiny_root, store_uri, override)), tmp_path)


EPOCH_TYPO = (
    "trainer.epoch: not a key of TrainerConfig (did you mean epochs? its keys: epochs, device, limit_batches, "
    "progress, deterministic, precision, channels_last, compile, label_smoothing, keep_best, strategy, "
    "early_stopping, restore_best, cuda_graph)"
)


def test_a_misspelt_key_in_a_preset_is_one_line_naming_the_file_and_the_closest_key(tiny_root, store_uri, tmp_path):
    """The same line as for the typo on the command line, with the file it is in."""
    configs = _user_configs(tmp_path, {"experiment/typo.yaml": "# @package _global_\ntrainer:\n  epoch: 2\n"})
    out = _train_with(configs, tiny_root, store_uri, "experiment=typo", tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"mnist-cnn-train: {configs}/experiment/typo.yaml: {EPOCH_TYPO}; fix it there."]
    out = processes.run(processes.train_command(tiny_root, store_uri, "trainer.epoch=2"), tmp_path)
    assert out.returncode == 2 and out.stderr.splitlines() == [f"mnist-cnn-train: {EPOCH_TYPO}."]
    assert all_runs(store_uri) == []


def test_a_broken_yaml_file_stops_only_the_commands_that_use_it(tmp_path):
    configs = _user_configs(
        tmp_path,
        {
            "experiment/broken.yaml": "# @package _global_\ntrainer:\n  epochs: 2\n   seed: 3\n",
            "experiment/fine.yaml": "# @package _global_\ntrainer:\n  epochs: 7\n",
        },
    )
    fine = processes.run([*processes.TRAIN, "--config-dir", str(configs), "experiment=fine", "--cfg", "job"], tmp_path)
    assert fine.returncode == 0 and "epochs: 7" in fine.stdout, fine.stderr
    broken = processes.run([*processes.TRAIN, "--config-dir", str(configs), "experiment=broken"], tmp_path)
    assert broken.returncode == 2 and broken.stderr.splitlines() == [
        f"mnist-cnn-train: {configs}/experiment/broken.yaml line 4, column 8: mapping values are not allowed here; "
        "fix the YAML there."
    ]


def test_a_model_file_without_a_name_is_one_line_naming_the_file_exit_2(tiny_root, store_uri, tmp_path):
    configs = _user_configs(
        tmp_path, {"model/mine.yaml": "layers:\n  - {type: flatten}\n  - {type: linear, out_features: 10}\n"}
    )
    out = _train_with(configs, tiny_root, store_uri, "model=mine", tmp_path)
    message = f"model.name has no value: {configs}/model/mine.yaml must set `name:` (or give model.name=...)."
    # the job's error log (a config checked once Hydra handed over the job): one line, nothing on stderr
    (line,) = out.stdout.splitlines()
    assert out.returncode == 2 and line.endswith(f"[mnist_cnn][ERROR] - {message}") and out.stderr == ""
    assert all_runs(store_uri) == []


def test_help_offers_the_options_of_each_group_and_no_schema(tmp_path):
    """The schemas the option files build on are ConfigStore entries outside the groups."""
    out = processes.run([*processes.TRAIN, "--help"], tmp_path)
    assert out.returncode == 0
    assert "optimizer: adam, adamw, sgd" in out.stdout.splitlines()
    assert "scheduler: cosine, none, onecycle, step" in out.stdout.splitlines()
    assert "schema" not in out.stdout and "base_" not in out.stdout


@pytest.mark.parametrize("override", ["hydra/launcher=slurm", "hydra.launcher.n_jobs=2"])
def test_a_launcher_without_m_is_one_line_exit_2_before_hydra_starts(tiny_root, store_uri, tmp_path, override):
    """Without -m Hydra would ignore the launcher and train here; refused before Hydra makes a run folder."""
    out = processes.run(processes.train_command(tiny_root, store_uri, override), tmp_path)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"mnist-cnn-train: {override} launches the jobs of a sweep; add -m (--multirun), or drop it to train here."
    ]
    assert not (tmp_path / "outputs").exists() and all_runs(store_uri) == []


@pytest.mark.slow  # a process of its own
def test_missing_data_is_named_before_any_run(store_uri, tmp_path):
    out = processes.run(processes.train_command(tmp_path / "nowhere", store_uri), tmp_path)
    assert out.returncode == 2
    assert f"mnist data not found: {tmp_path}/nowhere/MNIST/raw does not exist" in out.stderr + out.stdout
    assert all_runs(store_uri) == []


def test_a_malformed_yaml_file_is_one_line_with_file_and_line(tiny_root, store_uri, tmp_path):
    configs = _user_configs(
        tmp_path, {"experiment/broken.yaml": "# @package _global_\ntrainer:\n  epochs: 2\n   seed: 3\n"}
    )
    out = _train_with(configs, tiny_root, store_uri, "experiment=broken", tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mnist-cnn-train: {configs}/experiment/broken.yaml line 4, column 8: mapping values are not allowed here; "
        "fix the YAML there."
    ]


@pytest.mark.parametrize(
    "path",
    sorted([*CONF_DIR.rglob("*.yaml"), *EXPERIMENTS_DIR.glob("*.yaml")]),
    ids=lambda p: str(p.relative_to(CONF_DIR.parent)),
)
def test_every_shipped_yaml_file_parses(path):
    assert yaml.safe_load(path.read_text(encoding="utf-8")) is not None


@pytest.mark.slow
def test_a_relative_data_root_means_the_folder_the_command_started_in(tiny_root, store_uri, tmp_path):
    """`MNIST_CNN_DATA_DIR=../datasets`, from another folder: still found."""
    start = tmp_path / "project"
    start.mkdir()
    shutil.copytree(tiny_root, tmp_path / "datasets")
    command = processes.train_command("placeholder", store_uri, "trainer.limit_batches=2", "tracking.log_model=false")
    command.remove("data.root=placeholder")
    out = processes.run(command, start, env={"MNIST_CNN_DATA_DIR": "../datasets"})
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = all_runs(store_uri)
    assert run.data.params["data.root"] == str(start / "../datasets")


@pytest.mark.slow  # a process of its own
def test_the_module_and_the_console_script_are_one_command(tmp_path):
    script = Path(sys.executable).parent / "mnist-cnn-train"
    by_module = subprocess.run(
        [*processes.TRAIN, "--cfg", "job", "seed=5"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    by_script = subprocess.run(
        [str(script), "--cfg", "job", "seed=5"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert by_module.returncode == by_script.returncode == 0
    assert by_module.stdout == by_script.stdout and "seed: 5" in by_module.stdout


def test_a_users_own_folder_of_experiments_joins_the_tree_with_config_dir(tmp_path):
    """`--config-dir DIR`: DIR/experiment/mine.yaml is `experiment=mine` (and its YAML is checked too)."""
    (tmp_path / "mine" / "experiment").mkdir(parents=True)
    (tmp_path / "mine" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /optimizer: sgd\ntrainer:\n  epochs: 7\n"
    )
    out = processes.run(
        [*processes.TRAIN, "--config-dir", str(tmp_path / "mine"), "experiment=mine", "--cfg", "job"], tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "  name: sgd\n" in out.stdout and "  epochs: 7\n" in out.stdout


def test_ending_the_process_at_once_still_stops_the_process_pools_it_started(tmp_path):
    """exit_now skips Python's teardown but not what its exit does first: a process pool (as joblib's
    launcher leaves one) is shut down, rather than waited for by multiprocessing's exit handler."""
    code = (
        "from concurrent.futures import ProcessPoolExecutor; from mnist_cnn.cli.train import exit_now; "
        "pool = ProcessPoolExecutor(1); print(pool.submit(abs, -3).result(), flush=True); exit_now(0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stdout == "3\n", out.stderr[-2000:]


@pytest.mark.parametrize(
    "overrides,message",
    [
        pytest.param(
            ["tracking.register_as=a:b"],
            "tracking.register_as='a:b': MLflow's model registry refuses this name (names cannot be blank, contain '/' "
            "or ':', or resolve to another path such as '.' or '..'); choose another name.",
            id="unregistrable-name",
        ),
        pytest.param(
            ["objective.pruner=median", "objective.metrics=[test_acc]"],
            "objective.pruner=median rank epochs by the first of objective.metrics, but test_acc is logged only once, "
            "at the end; "
            "choose one of val_acc, val_loss, train_acc, train_loss.",
            id="pruner-on-test-acc",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["trainer.strategy=ddp"],
            "trainer.strategy=ddp runs under torchrun, one run at a time; drop -m (--multirun).",
            id="ddp",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_config_error_every_job_of_a_sweep_shares_is_refused_before_its_parent_opens(
    tiny_root, tmp_path, overrides, message
):
    """An error in what the jobs share (not in a key the sweep varies, here seed) would fail each
    job in turn: one line, exit 2, and no store, parent or job."""
    store = tmp_path / "mlflow.db"
    out = processes.run(
        processes.train_command(tiny_root, f"sqlite:///{store}", *overrides, "seed=1,2", multirun=True), tmp_path
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"mnist-cnn-train: {message}"]
    assert not store.exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_that_cannot_be_made_is_one_line_exit_2_and_no_run(tiny_root, store_uri, tmp_path, key):
    """A path through a file (or a read-only disk, a missing mount): refused before the run or the
    sweep's parent opens, where Hydra would print its traceback (and a sweep leave a parent behind)."""
    (tmp_path / "a_file").write_text("")
    folder = tmp_path / "a_file" / "out"
    sweep = key == "hydra.sweep.dir"
    command = processes.train_command(tiny_root, store_uri, f"{key}={folder}", *(["seed=1,2"] * sweep), multirun=sweep)
    out = processes.run(command, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mnist-cnn-train: {key}={folder}: cannot make or write that folder (Not a directory); choose another {key}."
    ]
    assert all_runs(store_uri) == []
