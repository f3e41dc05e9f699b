"""The typed config: what composes, what the checks reject (naming the key), and the one list of
keys that do not change a result."""

import subprocess
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_cnn.config import tree
from mnist_cnn.config.checks import check_config, registrable
from mnist_cnn.config.keys import RUN_SETTINGS, config_sha256, is_run_setting, override_key
from mnist_cnn.config.paths import ConfigFolder, make_paths_absolute
from mnist_cnn.config.schema import (
    DEVICE_ENV,
    OPTIONS,
    DataConfig,
    ObjectiveConfig,
    TrackingConfig,
    TrainerConfig,
    typed_config,
)
from mnist_cnn.config.tree import CONF_DIR, EXPERIMENTS_DIR
from mnist_cnn.errors import UserError
from mnist_cnn.tracking.run_names import run_name
from tests.helpers.config import make_cfg


def compose_error(*overrides: str) -> str:
    with pytest.raises((HydraException, OmegaConfBaseException)) as e:
        make_cfg(overrides)
    return str(e.value) + str(e.value.__cause__)


def check_error(*overrides: str) -> str:
    with pytest.raises(UserError) as e:
        check_config(make_cfg(overrides))
    return str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer=adam", "optimizer.momentum=0.9"], "Key 'momentum' not in 'AdamConfig'"),
        (["optimizer=sgd", "optimizer.betas=[0.9,0.99]"], "Key 'betas' not in 'SGDConfig'"),
        (["scheduler=none", "scheduler.gamma=0.5"], "Key 'gamma' not in 'NoSchedulerConfig'"),
        (["scheduler=step", "scheduler.max_lr=0.1"], "Key 'max_lr' not in 'StepSchedulerConfig'"),
        (["optimizer=rmsprop"], "Could not find 'optimizer/rmsprop'\n\nAvailable options in 'optimizer':\n\tadam\n"),
        (["trainer.device=tpu"], "Invalid value 'tpu', expected one of [auto, cpu, cuda]"),
        (["trainer.precision=32"], "expected one of [fp32, bf16]"),
        (["trainer.strategy=fsdp"], "Invalid value 'fsdp', expected one of [single, ddp]"),
        (["data.name=cifar"], "Invalid value 'cifar', expected one of [mnist, fashion_mnist, kmnist]"),
        (["data.download=true"], "expected one of [auto, never]"),
        (["objective.metrics=[val_accuracy]"], "Invalid value 'val_accuracy'"),
        (
            ["objective.pruner=asha"],
            "Invalid value 'asha', expected one of [none, median, hyperband, successive_halving, patient]",
        ),
        (["tracking.register_from=first"], "expected one of [last, best]"),
        (["model.layers.0.type=conv3d"], "Invalid value 'conv3d'"),
        (["model.layers.0.kernal_size=3"], "kernal_size"),
        (["trainer.epochs=many"], "trainer.epochs"),
        (["optimizer.lr=fast"], "optimizer.lr"),
    ],
)
def test_keys_that_do_not_apply_and_unknown_choices_fail_at_compose(overrides, message):
    assert message in compose_error(*overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+trainer.epoch=2"], "trainer.epoch: not a key of TrainerConfig (did you mean epochs?"),
        (["+model.layers.0.kernal=3"], "model.layers.0.kernal: not a key of LayerSpec (did you mean kernel_size?"),
        (["+seeds=3"], "seeds: not a key of Config (did you mean seed?"),
        (
            ["optimizer.name=adamw"],
            "optimizer.name is 'adamw' but the optimizer keys are those of 'adam'; choose the option with "
            "optimizer=adamw",
        ),
        (["optimizer.name=rmsprop"], "optimizer.name is 'rmsprop'"),
        (["optimizer.lr=inf"], "optimizer.lr must be > 0 (and finite), got inf."),
        (["optimizer.lr=nan"], "optimizer.lr must be > 0 (and finite), got nan."),
        (["optimizer.lr=0"], "optimizer.lr must be > 0 (and finite), got 0.0."),
        (["optimizer.lr=-1"], "optimizer.lr must be > 0 (and finite), got -1.0."),
        (["optimizer.weight_decay=-1"], "optimizer.weight_decay must be >= 0"),
        (["optimizer.betas=[0.9,1.5]"], "optimizer.betas must be in [0, 1) (and finite), got 1.5."),
        (["optimizer.betas=[0.9]"], "optimizer.betas must hold 2 numbers, got 1."),
        (["optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum must be in [0, 1)"),
        (
            ["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"],
            "optimizer.nesterov=true needs optimizer.momentum > 0.",
        ),
        (["scheduler=onecycle", "scheduler.pct_start=1"], "scheduler.pct_start must be in (0, 1)"),
        (["scheduler=onecycle", "scheduler.max_lr=-inf"], "scheduler.max_lr must be > 0"),
        (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size must be >= 1"),
        (["data.batch_size=0"], "data.batch_size must be >= 1 (and finite), got 0."),
        (["data.augment.rotate=200"], "data.augment.rotate must be in [0, 180] (and finite), got 200.0."),
        (["data.augment.scale=1"], "data.augment.scale must be in [0, 1) (and finite), got 1.0."),
        (["trainer.label_smoothing=1"], "trainer.label_smoothing must be in [0, 1) (and finite), got 1.0."),
        (["trainer.epochs=-1"], "trainer.epochs must be >= 1 (and finite), got -1."),
        (["data.val_size=-5"], "data.val_size must be >= 0 (and finite), got -5."),
        (["trainer.limit_batches=0"], "trainer.limit_batches must be >= 1"),
        (["tracking.heartbeat_s=0"], "tracking.heartbeat_s must be > 0"),
        (
            ["trainer.strategy=ddp"],
            "trainer.strategy=ddp runs under torchrun, which starts the processes that share each batch; start it "
            "as:\n  torchrun --nproc_per_node=2 -m mnist_cnn trainer.strategy=ddp",
        ),
        (["data.val_size=0"], "objective.metrics has val_acc, which needs a validation split; set data.val_size > 0."),
        (["model.layers.0.pool_size=15"], "model.layers[1] block: input is 1x1, pool_size 2 does not fit."),
        (
            ["objective.pruner=median", "objective.metrics=[test_acc]"],
            "objective.pruner=median rank epochs by the first of objective.metrics, but test_acc is logged only once, "
            "at the end; "
            "choose one of val_acc, val_loss, train_acc, train_loss.",
        ),
        (
            ["trainer.keep_best=2", "objective.metrics=[train_time_s]"],
            "trainer.keep_best=2 rank epochs by the first of objective.metrics, but train_time_s is logged only once, "
            "at the end; "
            "choose one of val_acc, val_loss, train_acc, train_loss.",
        ),
        (
            ["objective.pruner=hyperband", "tracking.enabled=false"],
            "objective.pruner=hyperband work through the MLflow store; drop tracking.enabled=false.",
        ),
        (
            ["objective.metrics=[val_acc,train_time_s]"],
            "objective.metrics=[val_acc,train_time_s] and objective.directions=[maximize]: give at least one metric "
            "and one direction (maximize or minimize) for each, in the same order.",
        ),
        (["objective.metrics=[]", "objective.directions=[]"], "objective.metrics=[] and objective.directions=[]"),
        (
            ["objective.metrics=[val_acc,val_acc]", "objective.directions=[maximize,maximize]"],
            "objective.metrics=[val_acc,val_acc] names a metric twice; name each once.",
        ),
        (
            [
                "objective.metrics=[val_acc,train_time_s]",
                "objective.directions=[maximize,minimize]",
                "objective.pruner=median",
            ],
            "objective.pruner=median judges one objective, but objective.metrics=[val_acc,train_time_s] has 2 (Optuna "
            "prunes single-objective trials only); set objective.pruner=none or one metric.",
        ),
        (
            ["trainer.early_stopping.min_delta=0.1"],
            "trainer.early_stopping.min_delta applies only with trainer.early_stopping.patience; set the patience",
        ),
        (
            ["trainer.early_stopping.patience=2", "objective.metrics=[test_acc]"],
            "trainer.early_stopping.patience=2 rank epochs by the first of objective.metrics, but test_acc is logged "
            "only once",
        ),
        (
            ["objective.pruner=patient"],
            "objective.pruner=patient needs objective.prune_patience (how many epochs, plus one, a job must fall "
            "short of its best before the median may prune it).",
        ),
        (
            ["objective.pruner=median", "objective.prune_patience=2"],
            "objective.prune_patience applies to objective.pruner=patient only, not median; drop it.",
        ),
        (
            ["tracking.register_from=best"],
            "tracking.register_from=best needs the best epochs kept: set trainer.keep_best=1 or more.",
        ),
        (["resume=abc", "resume_sweep=def"], "give only one of them"),
        (["trainer.keep_best=-1"], "trainer.keep_best must be >= 0"),
        (["seed=-1"], "seed must be in [0, 4294967295] (and finite), got -1."),
        (["seed=4294967296"], "seed must be in [0, 4294967295] (and finite), got 4294967296."),
        (["tracking.register_as=a/b"], "tracking.register_as='a/b': MLflow's model registry refuses this name"),
        (["tracking.register_as=a:b"], "tracking.register_as='a:b': MLflow's model registry refuses this name"),
        (["tracking.register_as=.."], "cannot be blank, contain '/' or ':', or resolve to another path"),
        (["resume="], "resume= is empty: give a run id or a checkpoint file, or leave resume out."),
        (["resume_sweep="], "resume_sweep= is empty"),
        (
            ["tracking.experiment=''"],
            "tracking.experiment='': an MLflow experiment needs a name of 1 to 256 characters",
        ),
        (
            [f"tracking.experiment={'x' * 1000}"],
            "tracking.experiment='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (1000 characters)",
        ),
    ],
)
def test_check_config_names_the_bad_key(overrides, message):
    assert message in check_error(*overrides)


def test_a_device_variable_that_names_no_device_is_one_line_naming_it(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    assert check_error() == (
        "MNIST_CNN_DEVICE='tpu' (trainer.device's default) is not a device: set it to auto, cpu or cuda, or unset it."
    )
    check_config(make_cfg(["trainer.device=cpu"]))  # a device given on the command line: the variable is not read


def test_every_shipped_model_and_experiment_passes_the_checks():
    presets = sorted(EXPERIMENTS_DIR.glob("*.yaml"))
    assert "fast99" in [p.stem for p in presets]
    for group, paths in (("model", (CONF_DIR / "model").glob("*.yaml")), ("experiment", presets)):
        for path in paths:
            check_config(make_cfg([f"{group}={path.stem}"]))


def test_every_option_has_its_schema_and_yaml_and_they_agree():
    """One schema per option, registered under the group; the YAML restates its defaults exactly."""
    for group, options in OPTIONS.items():
        assert sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) == sorted(o.name for o in options)
        for option in options:
            composed = make_cfg([f"{group}={option.name}"])[group]
            assert OmegaConf.get_type(composed) is option
            assert composed == OmegaConf.structured(option), (
                f"{group}/{option.name}.yaml differs from {option.__name__}"
            )


def test_single_schema_groups_default_to_their_yaml():
    cfg = make_cfg()
    for key, schema in (
        ("data", DataConfig),
        ("trainer", TrainerConfig),
        ("tracking", TrackingConfig),
        ("objective", ObjectiveConfig),
    ):
        yaml_node = OmegaConf.to_container(cfg[key], resolve=False)
        schema_node = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
        assert yaml_node == schema_node, key


def test_dataset_variants_inherit_mnists_settings():
    mnist, fashion = make_cfg()["data"], make_cfg(["data=fashion_mnist", "data.batch_size=32"])["data"]
    assert fashion.name == "fashion_mnist" and fashion.batch_size == 32
    assert {k: v for k, v in fashion.items() if k not in ("name", "batch_size")} == {
        k: v for k, v in mnist.items() if k not in ("name", "batch_size")
    }


def test_a_logged_config_comes_back_typed():
    cfg = make_cfg(["optimizer=sgd", "scheduler=onecycle", "data.root=/data"])
    back = typed_config(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    assert back == cfg and OmegaConf.get_type(back.optimizer).__name__ == "SGDConfig"
    with pytest.raises(OmegaConfBaseException, match="Key 'momentum' not in 'AdamConfig'"):
        typed_config(
            {**OmegaConf.to_container(make_cfg(), resolve=True), "optimizer": {"name": "adam", "momentum": 0.5}}
        )


def test_run_settings_are_one_list_for_fingerprints_names_and_resume():
    base = make_cfg(["data.root=/a"])
    same = make_cfg(["data.root=/b", "trainer.progress=false", "tracking.experiment=x", "data.download=never"])
    assert config_sha256(base) == config_sha256(same)  # where it reads and logs: the same experiment
    assert config_sha256(base) != config_sha256(make_cfg(["data.root=/a", "optimizer.lr=0.01"]))
    settings = [
        "data.root=/b",
        "trainer.progress=false",
        "tracking.uri=sqlite:///x.db",
        "hydra.launcher.n_jobs=2",
        "+resume=x",
    ]
    assert [s for s in settings if not is_run_setting(override_key(s))] == []
    assert run_name(settings + ["optimizer.lr=0.01", "seed=2"]) == "lr=0.01,seed=2"
    for key in RUN_SETTINGS:  # every entry names a real key
        assert OmegaConf.select(base, key, default="missing") != "missing", key


def test_relative_paths_mean_the_folder_the_command_started_in(tmp_path):
    cfg = make_cfg(["data.root=../datasets", "tracking.uri=sqlite:///runs/mlflow.db"])
    make_paths_absolute(cfg, tmp_path / "project")
    assert cfg.data.root == str(tmp_path / "project" / "../datasets")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/project/runs/mlflow.db"
    absolute = make_cfg(["data.root=/data", "tracking.uri=sqlite:////srv/mlflow.db"])
    make_paths_absolute(absolute, tmp_path)
    assert (absolute.data.root, absolute.tracking.uri) == ("/data", "sqlite:////srv/mlflow.db")


def test_one_override_changes_one_layer():
    base, changed = make_cfg(), make_cfg(["model.layers.0.out_channels=16"])
    assert changed.model.layers[0].out_channels == 16
    assert changed.model.layers[1] == base.model.layers[1] and len(changed.model.layers) == len(base.model.layers)


def test_seed_tutorial_preset_is_the_tutorial_recipe():
    cfg = make_cfg(["experiment=seed_tutorial"])
    assert (cfg.seed, cfg.model.name, cfg.optimizer.name, cfg.optimizer.lr) == (777, "seed_cnn", "adam", 0.001)
    assert (cfg.data.batch_size, cfg.data.val_size, cfg.data.normalize, cfg.data.drop_last) == (100, 0, False, True)
    assert (cfg.trainer.epochs, cfg.scheduler.name) == (15, "none")
    assert 60_000 // cfg.data.batch_size == 600


MINE = "# @package _global_\ndefaults:\n  - override /optimizer: sgd\ntrainer:\n  epochs: 7\n"


def test_users_add_their_own_experiments_from_any_folder_through_the_searchpath(tmp_path):
    """`hydra.searchpath=[file://DIR]`: DIR/experiment/mine.yaml is `experiment=mine`, beside the shipped ones."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(MINE)
    cfg = tree.compose([f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"])
    assert cfg.trainer.epochs == 7 and cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0.9
    assert tree.compose([f"hydra.searchpath=[file://{tmp_path}]", "experiment=fast99"]).trainer.epochs == 1
    assert tree.config_dirs([f"hydra.searchpath=[file://{tmp_path}]", "-cd", "/x"]) == [
        ConfigFolder(CONF_DIR),
        ConfigFolder(EXPERIMENTS_DIR, "experiment"),
        ConfigFolder(tmp_path),
        ConfigFolder(Path("/x")),
    ]


def test_the_config_tree_is_real_files_at_the_top_of_the_repository_and_none_is_in_the_package():
    """conf/ (every group, hparams_search/ and hydra/ included) and experiments/ (the presets) at the
    top, one path per file, so that a checkout on a filesystem without symlinks works as any other;
    no YAML inside mnist_cnn/ (the wheel gets its copy from pyproject.toml's package-dir)."""
    top = Path(__file__).parents[1]
    assert (CONF_DIR, EXPERIMENTS_DIR) == (top / "conf", top / "experiments")
    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    assert groups == {"data", "hparams_search", "hydra", "model", "optimizer", "scheduler", "tracking", "trainer"}
    assert (CONF_DIR / "config.yaml").is_file() and (EXPERIMENTS_DIR / "fast99.yaml").is_file()
    assert sorted((top / "mnist_cnn").rglob("*.yaml")) + sorted((top / "mnist_cnn").rglob("*.yml")) == []
    listed = subprocess.run(["git", "ls-files", "-s"], capture_output=True, text=True, cwd=top, check=True).stdout
    assert [line for line in listed.splitlines() if line.startswith("120000")] == []  # git's mode for a symlink


@pytest.mark.parametrize("name", ["digits", "a/b", "a:b", "..", ".", " ", "x/../y", "caf\u00e9 v2", "./x"])
def test_registered_model_names_follow_mlflows_own_rule(name):
    """config.checks repeats MLflow's rule so that it holds before MLflow is imported; this keeps the two equal."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
        mlflow_takes = True
    except MlflowException:
        mlflow_takes = False
    assert registrable(name) is mlflow_takes
