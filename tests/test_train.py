"""End to end: train on tiny IDX files (and briefly on the real MNIST), then read back what MLflow holds."""

import math
import subprocess
import sys
import textwrap

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from mnist_cnn import train
from mnist_cnn.errors import ConfigError, UserError
from mnist_cnn.spec import check_config
from tests.conftest import make_cfg


def only_run(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["mnist"], output_format="list")
    assert len(runs) == 1
    return runs[0]


def test_one_epoch_lands_everything_in_mlflow(tiny_cfg, tmp_path):
    final = train.run(tiny_cfg("model.layers.0.out_channels=8"), tmp_path / "out")
    assert final["test_acc"] > 0.5  # the squares are easy: one epoch learns them

    run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.layers.0.out_channels"] == "8" and params["optimizer.name"] == "adam"
    assert params["n_params"] == str(8 * 9 + 8 + 64 * 8 * 9 + 64 + 3136 * 10 + 10)
    client = MlflowClient()
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "samples_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
    assert run.data.metrics["test_acc"] == pytest.approx(final["test_acc"])
    assert {"git_commit", "torch_version", "device"} <= set(run.data.tags)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    assert (tmp_path / "out" / "checkpoints" / "last.pt").is_file()


def test_logged_model_loads_without_this_package_and_reproduces_test_acc(tiny_cfg, tiny_root, tmp_path):
    """The logged model takes [0, 1] floats and normalises inside: no mnist_cnn code needed to use it."""
    train.run(tiny_cfg(), tmp_path / "out")
    run = only_run(tmp_path)
    script = textwrap.dedent(
        f"""
        import gzip, sys
        import numpy as np, torch, mlflow
        sys.modules["mnist_cnn"] = None  # any import of this package now fails
        mlflow.set_tracking_uri("sqlite:///{tmp_path}/mlflow.db")
        model = mlflow.pytorch.load_model("runs:/{run.info.run_id}/model")
        raw = "{tiny_root}/MNIST/raw/"
        images = np.frombuffer(gzip.open(raw + "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
        labels = np.frombuffer(gzip.open(raw + "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / 255)
        print((model(x).argmax(1).numpy() == labels).mean())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(run.data.metrics["test_acc"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=sgd", "scheduler=step", "scheduler.step_size=1"],
        ["optimizer=adamw", "scheduler=cosine"],
        ["optimizer=sgd", "optimizer.nesterov=true", "scheduler=onecycle"],
        ["model=bn_cnn", "data.drop_last=true", "data.val_size=0"],
        ["trainer.precision=bf16", "trainer.channels_last=false", "trainer.deterministic=false"],
    ],
    ids=["sgd-step", "adamw-cosine", "nesterov-onecycle", "bn_cnn-no-val", "bf16-nchw"],
)
def test_optimizers_schedulers_and_models_train(tiny_cfg, tmp_path, overrides):
    final = train.run(tiny_cfg("tracking.enabled=false", "trainer.epochs=2", *overrides), tmp_path / "out")
    assert math.isfinite(final["train_loss"])
    assert final["test_acc"] > 0.2  # clearly above chance (0.1) after two epochs on the squares
    assert ("val_acc" in final) == ("data.val_size=0" not in overrides)
    assert not (tmp_path / "mlflow.db").exists()  # tracking disabled: nothing written


def test_precision_is_resolved_for_the_hardware_and_logged(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.limit_batches=2", "tracking.log_model=false")
    train.run(cfg, tmp_path / "out")
    expected = train.resolve_precision(None, torch.device("cpu"))
    assert only_run(tmp_path).data.params["trainer.precision"] == expected
    assert train.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # an explicit choice is kept


def test_resolve_device_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        assert train.resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="trainer.device=cuda but no CUDA GPU is visible"):
            train.resolve_device("cuda")
    assert train.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_crash_ends_the_run_failed_with_the_error(tiny_cfg, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train, "evaluate", boom)
    with pytest.raises(RuntimeError):
        train.run(tiny_cfg(), tmp_path / "out")
    run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk on fire"


def test_divergence_stops_the_run_with_advice(tiny_cfg, tmp_path):
    with pytest.raises(train.DivergedError, match="train_loss became nan in epoch 1: training diverged. Lower optimizer.lr"):
        train.run(tiny_cfg("optimizer=sgd", "optimizer.lr=1e6"), tmp_path / "out")
    assert only_run(tmp_path).info.status == "FAILED"


def test_an_interrupt_ends_the_run_killed(tiny_cfg, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(), tmp_path / "out")
    assert only_run(tmp_path).info.status == "KILLED"


def cli_command(tmp_path, data_root):
    return [sys.executable, "-m", "mnist_cnn.train", f"data.root={data_root}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]


def cli(tmp_path, *overrides, data_root):
    return subprocess.run([*cli_command(tmp_path, data_root), *overrides], capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_cli_rejects_an_impossible_model_before_any_run(tiny_root, tmp_path):
    out = cli(tmp_path, "model.layers.1.kernel_size=17", "data.verify_checksums=false", data_root=tiny_root)
    assert out.returncode == 2
    assert "model.layers[1] block: input is 14x14 (padding 1), kernel_size 17 does not fit" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # the tracking store was never touched


def test_cli_reports_missing_data_before_any_run(tmp_path):
    out = cli(tmp_path, data_root=tmp_path / "nowhere")
    assert out.returncode == 2
    assert f"mnist data not found in {tmp_path}/nowhere/MNIST/raw" in out.stderr + out.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_rejects_a_bad_tracking_uri(tiny_root, tmp_path):
    out = cli(tmp_path, "tracking.uri=nosuchscheme://x", "data.verify_checksums=false", "data.val_size=100", data_root=tiny_root)
    assert out.returncode == 2
    assert "tracking.uri='nosuchscheme://x': cannot open the MLflow store" in out.stderr + out.stdout


def test_config_checks_run_before_torch_is_imported(tmp_path):
    """A bad config is reported within about a second: the checks need neither torch nor MLflow."""
    code = "import sys, mnist_cnn.cli; print(sorted({'torch', 'mlflow', 'torchvision'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.name=rmsprop", "optimizer.name must be one of adam, adamw, sgd, got 'rmsprop'."),
        ("scheduler.name=exp", "scheduler.name must be one of none, step, cosine, onecycle"),
        ("trainer.device=tpu", "trainer.device must be one of auto, cpu, cuda"),
        ("data.batch_size=0", "data.batch_size must be a positive integer, got 0."),
        ("trainer.epochs=-1", "trainer.epochs must be a positive integer, got -1."),
        ("data.val_size=-5", "data.val_size must be 0 or more, got -5."),
        ("data.name=cifar", "data.name: unknown dataset 'cifar'"),
        ("model.layers.0.pool_size=15", "model.layers[1] block: input is 1x1, pool_size 2 does not fit."),
    ],
)
def test_check_config_names_the_bad_key(override, message):
    with pytest.raises(UserError) as e:
        check_config(make_cfg([override]))
    assert message in str(e.value)


def test_an_unreachable_tracking_server_fails_within_seconds_not_minutes(tiny_root, tmp_path):
    """Nothing listens on port 9; MLflow's own retries would take minutes, the first contact does not."""
    overrides = ("tracking.uri=http://127.0.0.1:9", "data.verify_checksums=false", "data.val_size=100")
    out = subprocess.run([*cli_command(tmp_path, tiny_root), *overrides], capture_output=True, text=True, cwd=tmp_path, timeout=90)
    assert out.returncode == 2
    assert "tracking.uri='http://127.0.0.1:9': cannot open the MLflow store" in out.stdout + out.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.layers.0.kernal_size=3", "kernal_size"),
        ("trainer.epochs=many", "trainer.epochs"),
        ("optimizer.lr=fast", "optimizer.lr"),
    ],
)
def test_unknown_keys_and_wrong_types_fail_at_compose(override, message):
    with pytest.raises(Exception) as e:
        make_cfg([override])
    assert message in str(e.value) + str(e.value.__cause__)


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


def test_real_mnist_end_to_end(real_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(
        [
            f"data.root={real_root}",
            "data.batch_size=100",
            "trainer.epochs=1",
            "trainer.limit_batches=60",
            "trainer.progress=false",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "tracking.log_model=false",
        ]
    )
    final = train.run(cfg, tmp_path / "out")
    assert final["test_acc"] > 0.85  # 60 steps of Adam already learn most digits
    run = only_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.metrics["val_acc"] > 0.85
