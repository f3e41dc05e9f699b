"""Training end to end, in process, on tiny IDX files (and briefly on the real MNIST), then reading
back what MLflow holds: metrics, tags, artifacts, the model, and a final status for every ending."""

import importlib.metadata
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

from mnist_cnn.config.job import JobContext
from mnist_cnn.config.keys import config_sha256
from mnist_cnn.config.schema import DEVICE_ENV
from mnist_cnn.engine import loop, precision, repro
from mnist_cnn.engine.distributed import World
from mnist_cnn.errors import ConfigError, DivergedError
from mnist_cnn.model.network import Network
from mnist_cnn.names import HEARTBEAT
from mnist_cnn.runner import record, setup, train
from mnist_cnn.tracking.environment import canonical
from mnist_cnn.tracking.tracker import Tracker
from tests.helpers.config import make_cfg
from tests.helpers.interrupted import FAST, killed_in_epoch_2, resume
from tests.helpers.mlflow_store import all_runs, only_run
from tests.helpers.state import fresh_state


def test_one_epoch_lands_everything_in_mlflow(tiny_cfg, store_uri, tmp_path):
    final = train.run(tiny_cfg("model.layers.0.out_channels=8", "tracking.log_model=false"), tmp_path / "out").metrics
    assert final["test_acc"] > 0.5  # the squares are easy: one epoch learns them

    run = only_run(store_uri)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.layers.0.out_channels"] == "8" and params["optimizer.name"] == "adam"
    # enums logged by name; the suite's device is cpu (conftest)
    assert params["trainer.device"] == "cpu" and params["data.download"] == "never"
    assert params["n_params"] == str(8 * 9 + 8 + 64 * 8 * 9 + 64 + 3136 * 10 + 10)
    client = MlflowClient(store_uri)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "samples_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
    assert run.data.metrics["test_acc"] == pytest.approx(final["test_acc"])
    tags = run.data.tags  # git_commit, seed and the versions: by value in test_resume
    assert (tags["device"], tags["mnist_cnn.pid"]) == ("cpu", str(os.getpid()))
    assert HEARTBEAT in tags  # a clock time, written while the run trains
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "config.yaml",
        "environment.txt",
        "checkpoints",
        "plots",
        "classification_report.json",
    }
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/confusion_matrix.png", "plots/misclassified.png"}
    report = json.loads(
        Path(client.download_artifacts(run.info.run_id, "classification_report.json", str(tmp_path))).read_text()
    )
    assert report["accuracy"] == pytest.approx(final["test_acc"]) and [c["name"] for c in report["classes"]] == list(
        "0123456789"
    )
    per_class = [run.data.metrics[f"test_acc_class_{k}"] for k in range(10)]
    assert [c["recall"] for c in report["classes"]] == pytest.approx(per_class)
    assert sum(c["support"] for c in report["classes"]) == 200
    assert (tmp_path / "out" / "checkpoints" / "last.pt").is_file()


def test_a_run_logs_the_version_of_every_installed_package_as_environment_txt(tiny_cfg, store_uri, tmp_path):
    train.run(tiny_cfg("tracking.log_model=false"), tmp_path / "out")
    run_id = only_run(store_uri).info.run_id
    text = Path(MlflowClient(store_uri).download_artifacts(run_id, "environment.txt", str(tmp_path))).read_text()
    lines = text.splitlines()
    installed = {canonical(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    listed = [line.partition("==")[0] for line in lines]
    assert listed == sorted(installed)  # every one, by its PEP 503 name, in order
    for package in ("torch", "torchvision", "mlflow", "numpy", "hydra-core"):
        assert f"{package}=={importlib.metadata.version(package)}" in lines, package


def test_a_run_names_its_dataset_and_links_to_the_model_training_view(
    tiny_cfg, tiny_root, store_uri, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    real = train.train_and_validate

    def slow_epoch(*args, **kwargs):  # the tiny epochs end before the monitor's first 1 s sample
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_and_validate", slow_epoch)
    train.run(
        tiny_cfg("trainer.epochs=2", "tracking.log_model=false", "tracking.system_metrics=true"), tmp_path / "out"
    )
    run = only_run(store_uri)
    (dataset,) = run.inputs.dataset_inputs
    profile = json.loads(dataset.dataset.profile)
    assert dataset.dataset.name == "mnist" and dataset.dataset.digest == run.data.tags["data_sha256"][:12]
    assert (profile["train_size"], profile["val_size"], profile["test_size"]) == (500, 100, 200)
    assert json.loads(dataset.dataset.source)["uri"] == f"{tiny_root}/MNIST/raw"
    experiment = MlflowClient(store_uri).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    link = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert link in capsys.readouterr().out
    assert "system/cpu_utilization_percentage" in run.data.metrics


@pytest.mark.slow  # a process of its own
def test_a_local_runs_link_comes_with_the_mlflow_ui_command_that_serves_its_store(
    tiny_cfg, store_uri, tmp_path, capsys
):
    """Not `make ui`, which serves only the checkout's ./mlflow.db: the store this run used, on the
    address the link names."""
    train.run(tiny_cfg("trainer.limit_batches=2", "tracking.log_model=false"), tmp_path / "out")
    run = only_run(store_uri)
    link = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    command = f"mlflow ui --backend-store-uri {store_uri} --host 127.0.0.1 --port 5000"
    assert f"  {link}  (serve this store's UI with: {command})\n" in capsys.readouterr().out


@pytest.mark.slow  # a second Python importing torch and MLflow; docs/reliability.md lists it slow. The quick tier loads
# logged models in process (test_logging_the_model_leaves_the_callers_model_where_it_was, test_untrusted_models)
def test_logged_model_loads_without_this_package_and_behaves_like_a_module(tiny_cfg, tiny_root, store_uri, tmp_path):
    """It takes [0, 1] floats and normalises inside; `.eval()`/`.train()` work; no mnist_cnn code needed."""
    cfg = tiny_cfg()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.run(cfg, tmp_path / "out")
    assert not [w for w in caught if "No complete tensor" in str(w.message)]
    run = only_run(store_uri)
    script = textwrap.dedent(
        f"""
        import gzip, sys
        import numpy as np, torch, mlflow
        sys.modules["mnist_cnn"] = None  # any import of this package now fails
        mlflow.set_tracking_uri("{store_uri}")
        model = mlflow.pytorch.load_model("runs:/{run.info.run_id}/model")
        model.train(); model.eval()  # the first thing a PyTorch user types
        raw = "{tiny_root}/MNIST/raw/"
        images = np.frombuffer(gzip.open(raw + "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
        labels = np.frombuffer(gzip.open(raw + "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
        x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / 255)
        assert model(x[:1]).shape == (1, 10)  # any batch size
        print((model(x).argmax(1).numpy() == labels).mean())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(run.data.metrics["test_acc"])


def test_logging_the_model_leaves_the_callers_model_where_it_was(store_uri):
    """The logged model is an fp32 copy in eval mode; the caller's stays as it was."""
    import mlflow.pytorch  # the module itself, not mlflow's lazy stand-in for it

    from mnist_cnn.tracking import model as logged

    client = MlflowClient(store_uri)
    run = client.create_run(client.create_experiment("logged"))
    network = Network.of([{"type": "flatten"}, {"type": "linear", "out_features": 10}], (1, 28, 28), 10)
    model = network.build().double().train()
    uri = logged.log_model(client, client.get_run(run.info.run_id), model, network)
    assert next(model.parameters()).dtype == torch.float64 and model.training  # untouched
    folder = client.get_logged_model(uri.removeprefix("models:/")).artifact_location
    copy = mlflow.pytorch.load_model(folder)
    assert next(copy.parameters()).dtype == torch.float32 and not copy.training


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=sgd", "scheduler=step", "scheduler.step_size=1"],
        ["optimizer=adamw", "scheduler=cosine"],
        ["optimizer=sgd", "optimizer.nesterov=true", "scheduler=onecycle"],
        ["model=bn_cnn", "data.drop_last=true", "data.val_size=0", "objective.metrics=[test_acc]"],
        ["trainer.precision=bf16", "trainer.channels_last=false", "trainer.deterministic=false"],
    ],
    ids=["sgd-step", "adamw-cosine", "nesterov-onecycle", "bn_cnn-no-val", "bf16-nchw"],
)
def test_optimizers_schedulers_and_models_train(tiny_cfg, store_uri, tmp_path, overrides):
    final = train.run(tiny_cfg("tracking.enabled=false", "trainer.epochs=2", *overrides), tmp_path / "out").metrics
    assert math.isfinite(final["train_loss"])
    assert final["test_acc"] > 0.2  # clearly above chance (0.1) after two epochs on the squares
    assert ("val_acc" in final) == ("data.val_size=0" not in overrides)
    assert all_runs(store_uri) == []  # tracking disabled: nothing recorded


def test_a_null_precision_is_measured_resolved_and_logged_with_its_reason(tiny_cfg, store_uri, tmp_path):
    train.run(tiny_cfg("trainer.limit_batches=2", "tracking.log_model=false"), tmp_path / "out")
    run = only_run(store_uri)
    logged, reason = run.data.params["trainer.precision"], run.data.tags["precision_reason"]
    assert logged in precision.candidates(None, torch.device("cpu"))
    if len(precision.candidates(None, torch.device("cpu"))) == 2:  # timed both, picked the faster by MARGIN
        fp32, bf16 = map(float, re.search(r"fp32 ([\d.]+) ms, bf16 ([\d.]+) ms", reason).groups())
        assert logged == ("bf16" if fp32 > precision.MARGIN * bf16 else "fp32")
    else:
        assert logged == "fp32" and "bf16 was not tried" in reason


def test_an_explicit_precision_is_kept_without_measuring(monkeypatch):
    monkeypatch.setattr(precision, "step_times", lambda *a: pytest.fail("measured a configured precision"))
    choice = precision.choose("bf16", torch.nn.Linear(784, 10), 8, torch.device("cpu"))
    assert (choice.precision, choice.reason) == ("bf16", "configured (trainer.precision)")


def test_null_picks_whichever_precision_measured_faster_and_bf16_only_by_a_margin(monkeypatch):
    monkeypatch.setattr(precision, "bf16_kernels", lambda device: True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    for fp32, bf16, picked in [(10.0, 5.0, "bf16"), (10.0, 9.8, "fp32"), (5.0, 10.0, "fp32")]:
        monkeypatch.setattr(precision, "_measured", {})
        monkeypatch.setattr(precision, "step_times", lambda *a, t=(fp32, bf16): {"fp32": t[0], "bf16": t[1]})
        choice = precision.choose(None, model, 8, torch.device("cpu"))
        assert choice.precision == picked and f"fp32 {fp32:.2f} ms, bf16 {bf16:.2f} ms" in choice.reason


def test_measuring_leaves_the_model_and_every_rng_untouched():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Dropout(0.5),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 26 * 26, 10),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    times = precision.step_times(model, 8, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and all(
        p.grad is None for p in model.parameters()
    )
    assert set(times) == {"fp32", "bf16"} and all(t > 0 for t in times.values())


def test_bf16_is_not_tried_where_torch_runs_avx2_kernels(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 (or a CPU without AVX-512) makes bf16 autocast several times slower than fp32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision.candidates(None, torch.device("cpu")) == ("fp32",)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert precision.candidates(None, torch.device("cpu")) == ("fp32", "bf16")


def test_fp32_matmuls_use_tensor_cores_on_cuda_and_nothing_changes_on_a_cpu():
    """cuBLAS's own flag: set_float32_matmul_precision("high") would also turn oneDNN's CPU matmuls to TF32."""
    matmul = torch.backends.cuda.matmul
    before, matmul.allow_tf32 = matmul.allow_tf32, False  # a property of torch's: monkeypatch cannot put it back
    try:
        precision.use_tensor_cores(torch.device("cpu"))
        assert matmul.allow_tf32 is False and torch.backends.mkldnn.matmul.fp32_precision != "tf32"
        precision.use_tensor_cores(torch.device("cuda", 0))  # a flag: set without a GPU
        assert matmul.allow_tf32 is True and torch.backends.mkldnn.matmul.fp32_precision != "tf32"
    finally:
        matmul.allow_tf32 = before


def test_a_resumed_run_and_every_rank_set_the_matmul_precision_for_their_device(tiny_cfg, store_uri, monkeypatch):
    """Not only where trainer.precision=null measures: a resumed run takes its precision from the
    checkpoint and ranks other than 0 never measure, yet each computes as the run that measured."""
    prepared = []
    monkeypatch.setattr(precision, "use_tensor_cores", prepared.append)
    cfg = tiny_cfg("trainer.device=cpu", *FAST)
    run_id = killed_in_epoch_2(cfg, store_uri, Path.cwd() / "cut")
    prepared.clear()
    resume(tiny_cfg(), run_id)
    assert prepared == [torch.device("cpu")]
    prepared.clear()
    setup.prepare(cfg, JobContext(), World(rank=1, size=2))  # what rank 1 of two does before its first step
    assert prepared == [torch.device("cpu")]


def test_the_test_suites_runs_train_on_the_cpu_where_a_gpu_is_visible(tiny_cfg, monkeypatch):
    """`make test` on a GPU machine: trainer.device=auto would send the suite's runs, and their
    bit-for-bit assertions, to CUDA; conftest makes cpu the default, for processes started here too."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = tiny_cfg()
    assert cfg.trainer.device.name == "cpu" and os.environ[DEVICE_ENV] == "cpu"
    state, _ = fresh_state(cfg)
    assert state.device == torch.device("cpu") and next(state.model.parameters()).device == torch.device("cpu")


@pytest.mark.parametrize(
    "inherited, deterministic, kept",
    [
        (":0:0", True, ":4096:8"),  # torch's check would raise at the first matmul: replaced, with a warning
        (":16:8", True, ":16:8"),  # a deterministic value of the user's own
        (None, True, ":4096:8"),
        (None, False, ":4096:8"),  # set for every run: a deterministic job may follow in the same process
        (":0:0", False, ":0:0"),  # a user's value, for a run that is not deterministic
    ],
)
def test_the_cublas_workspace_is_one_deterministic_matmuls_accept(monkeypatch, caplog, inherited, deterministic, kept):
    if inherited is None:
        monkeypatch.delenv(repro.CUBLAS_WORKSPACE, raising=False)
    else:
        monkeypatch.setenv(repro.CUBLAS_WORKSPACE, inherited)
    repro.cublas_workspace(deterministic)
    assert os.environ[repro.CUBLAS_WORKSPACE] == kept
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    replaced = inherited is not None and inherited != kept
    message = (
        "CUBLAS_WORKSPACE_CONFIG=':0:0' is not a workspace cuBLAS is deterministic with; trainer.deterministic=true"
    )
    assert warned == ([f"{message} sets it to ':4096:8'."] if replaced else [])


def test_a_deterministic_run_replaces_an_inherited_cublas_workspace_that_is_not(monkeypatch):
    monkeypatch.setenv(repro.CUBLAS_WORKSPACE, ":0:0")
    repro.set_deterministic(True)  # what every run on the CPU sets anyway (trainer.deterministic=null)
    assert os.environ[repro.CUBLAS_WORKSPACE] == ":4096:8"


def test_resolve_device_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        assert loop.resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="trainer.device=cuda but no CUDA GPU is visible"):
            loop.resolve_device("cuda")
    assert loop.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_crash_ends_the_run_failed_with_the_error(tiny_cfg, store_uri, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train, "evaluate", boom)
    with pytest.raises(RuntimeError):
        train.run(tiny_cfg(), tmp_path / "out")
    run = only_run(store_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk on fire"


def test_a_nan_loss_ends_the_run_failed_with_advice(tiny_cfg, store_uri, tmp_path):
    with pytest.raises(
        DivergedError, match=r"train_loss became nan in epoch 1 .* training diverged. Lower optimizer.lr"
    ):
        train.run(tiny_cfg("optimizer=sgd", "optimizer.lr=1e6", "tracking.log_model=false"), tmp_path / "out")
    assert only_run(store_uri).info.status == "FAILED"


def test_a_finite_explosion_at_chance_accuracy_is_divergence_too(real_root, store_uri, tmp_path):
    """Adam at lr=100 on MNIST keeps a finite loss of millions and 10% accuracy: FAILED, not FINISHED."""
    cfg = make_cfg(
        [
            f"data.root={real_root}",
            "trainer.limit_batches=30",
            "trainer.epochs=1",
            "trainer.progress=false",
            "optimizer.lr=100",
            f"tracking.uri={store_uri}",
            "tracking.log_model=false",
        ]
    )
    with pytest.raises(DivergedError, match=r"in epoch 1 \(chance level 2.30\) with train_acc 0.\d+ \(chance 0.10\)"):
        train.run(cfg, tmp_path / "out")
    assert only_run(store_uri).info.status == "FAILED"


def test_a_batch_larger_than_the_split_with_drop_last_fails_before_any_run(tiny_cfg, store_uri, tmp_path):
    with pytest.raises(ConfigError, match="data.batch_size=1000 with data.drop_last=true leaves no batch of the 500"):
        train.run(tiny_cfg("data.batch_size=1000", "data.drop_last=true"), tmp_path / "out")
    assert all_runs(store_uri) == []


def test_an_interrupt_ends_the_run_killed_with_its_resume_command(tiny_cfg, store_uri, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "evaluate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(), tmp_path / "out")
    run = only_run(store_uri)
    assert run.info.status == "KILLED"
    assert run.data.tags["resume_command"] == f"mnist-cnn-train resume={run.info.run_id} tracking.uri={store_uri}"


@pytest.mark.parametrize("phase", ["test-evaluation", "model-logging"])
def test_a_stop_requested_after_the_last_epoch_is_not_ignored_and_resume_finishes_the_run(
    tiny_cfg, store_uri, tmp_path, monkeypatch, phase
):
    """SIGTERM while the test split is scored or the model logged ends the run KILLED, not FINISHED;
    resuming it finishes the same run."""
    owner, name = (record, "score") if phase == "test-evaluation" else (Tracker, "log_model")
    settings = ["tracking.log_model=false"] if phase == "test-evaluation" else []  # no model: quicker
    real = getattr(owner, name)
    ctx = JobContext()

    def then_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        ctx.stops.handle(signal.SIGTERM)  # what SIGTERM does; the run is in its graceful phase
        return result

    monkeypatch.setattr(owner, name, then_signal)
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(*settings), tmp_path / "out", ctx)
    killed = only_run(store_uri)
    assert killed.info.status == "KILLED"
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    final = resume(tiny_cfg(), killed.info.run_id)
    run = only_run(store_uri)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.metrics["test_acc"] == final["test_acc"]


@pytest.mark.slow  # the quick tier's slowest test; it keeps the real files' checksums (test_data) and tiny runs
def test_real_mnist_end_to_end(real_root, store_uri, tmp_path):
    cfg = make_cfg(
        [
            f"data.root={real_root}",
            "data.batch_size=100",
            "trainer.epochs=1",
            "trainer.limit_batches=60",
            "trainer.progress=false",
            f"tracking.uri={store_uri}",
            "tracking.log_model=false",
        ]
    )
    final = train.run(cfg, tmp_path / "out").metrics
    assert final["test_acc"] > 0.85  # 60 steps of Adam already learn most digits
    run = only_run(store_uri)
    assert run.info.status == "FINISHED" and run.data.metrics["val_acc"] > 0.85


def test_a_run_never_rewrites_its_config_and_records_what_it_resolved(tiny_cfg, store_uri, tmp_path):
    """trainer.precision=null stays null in the config (and so in config_sha256 and config.yaml);
    what it resolved to is the run's `precision` tag and its trainer.precision param."""
    cfg = tiny_cfg("tracking.log_model=false")
    before = OmegaConf.to_yaml(cfg)
    train.run(cfg, tmp_path / "out")
    assert OmegaConf.to_yaml(cfg) == before
    run = only_run(store_uri)
    assert (
        run.data.tags["precision"] in ("fp32", "bf16")
        and run.data.params["trainer.precision"] == run.data.tags["precision"]
    )
    logged = MlflowClient(store_uri).download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert OmegaConf.load(logged).trainer.precision is None
    assert run.data.tags["config_sha256"] == config_sha256(cfg)
