"""Training on a CUDA GPU (engine.graphs, trainer.cuda_graph): the captured step computes what the
eager step computes, an epoch never makes the host wait for the GPU, a run resumes bit for bit,
DDP over NCCL, and a whole run through the command line. Every test here is marked `gpu`:
`make test-gpu` runs them on a GPU machine, and elsewhere they are skipped saying so (conftest.py)."""

import math

import pytest
import torch
from mlflow import MlflowClient

from mnist_cnn.engine import distributed, loop, precision
from mnist_cnn.runner import train
from tests.helpers import processes
from tests.helpers.interrupted import FAST, ctrl_c_in_epoch, resume
from tests.helpers.mlflow_store import history, only_run, runs_by_name
from tests.helpers.state import fresh_state

pytestmark = pytest.mark.gpu

ON_GPU = ("trainer.device=cuda", "model=bn_cnn", "data.augment.rotate=10")  # batchnorm, dropout and warps on the device
# A conv block and dropout, no batchnorm: a conv bias before batchnorm gets only rounding noise for a gradient, which
# Adam turns into full-size steps, so no tolerance would hold for it between two ways of rounding.
DROPOUT_NET = (
    "model.layers=[{type:block,out_channels:16,kernel_size:3,padding:1},{type:flatten},"
    "{type:dropout,p:0.3},{type:linear,out_features:10}]"
)
STEPS_100 = ("data.batch_size=48", "trainer.epochs=9")  # 10 full batches of the 500 images and a partial one, 9 times


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 without TF32 for cuDNN's convolutions and cuBLAS's matmuls, on both sides of a comparison:
    every run's set-up turns TF32 on for matmuls (engine.precision.use_tensor_cores), and its
    rounding, not the steps compared, would decide a tolerance of 1e-4."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(precision, "use_tensor_cores", lambda device: None)
    matmul = torch.backends.cuda.matmul
    before, matmul.allow_tf32 = matmul.allow_tf32, False  # a property of torch's: monkeypatch cannot put it back
    yield
    matmul.allow_tf32 = before


def trained(cfg):
    """Each epoch's train_loss and train_acc, and the final weights and buffers."""
    state, settings = fresh_state(cfg)
    epochs = [loop.train_epoch(state, settings, e) for e in range(1, cfg.trainer.epochs + 1)]
    return epochs, state.model.state_dict()


@pytest.mark.parametrize(
    "overrides",
    [
        ("optimizer=adam", "scheduler=onecycle"),
        ("optimizer=adamw", "scheduler=cosine"),
        ("optimizer=sgd", "scheduler=step", "scheduler.step_size=3"),  # the lr drops every 33 steps, under the graph
    ],
    ids=["adam-onecycle", "adamw-cosine", "sgd-step"],
)
def test_the_captured_step_computes_what_the_eager_step_computes(tiny_cfg, exact_fp32, overrides):
    """99 steps of the same batches from the same seed: each epoch captures after its warm-up, the
    partial batch runs eagerly between replays, and the lr changes under the graph (onecycle keeps
    the optimizer out of the graph). Only float rounding differs: Adam's capturable arithmetic
    (float32 bias corrections on the device, float64 on the host when eager), fused SGD; fp32
    without TF32 on both sides (pinned, and checked to have held) and deterministic kernels keep it
    from growing into the result."""
    common = ("trainer.device=cuda", DROPOUT_NET, "data.augment.rotate=10", *STEPS_100, *overrides)
    common += ("trainer.precision=fp32", "trainer.deterministic=true")
    eager, eager_weights = trained(tiny_cfg(*common, "trainer.cuda_graph=false"))
    graph, graph_weights = trained(tiny_cfg(*common, "trainer.cuda_graph=true"))
    for e, g in zip(eager, graph):
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
        assert g["train_acc"] == pytest.approx(e["train_acc"], abs=0.01)  # 5 of the 500 images
    for key, weights in eager_weights.items():
        torch.testing.assert_close(graph_weights[key], weights, rtol=1e-3, atol=1e-5, msg=key)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32  # what 1e-4 assumes


@pytest.mark.parametrize(
    "overrides",
    [("optimizer=adam", "scheduler=onecycle"), ("optimizer=sgd", "scheduler=step"), ("trainer.cuda_graph=false",)],
    ids=["captured-eager-optimizer", "captured", "eager"],
)
def test_an_epoch_never_makes_the_host_wait_for_the_gpu(tiny_cfg, monkeypatch, overrides):
    """Under torch.cuda.set_sync_debug_mode("error") an operation that waits for the GPU raises: the
    warm-up, capture, replays, partial batch, scheduler steps, permutation and warps have none. The
    epoch's sums are read back once, after the last step, which the mode is off for."""
    cfg = tiny_cfg(*ON_GPU, "data.batch_size=48", *overrides)
    state, settings = fresh_state(cfg)
    read_back = distributed.all_sum

    def after_the_last_step(*args):
        torch.cuda.set_sync_debug_mode(0)
        return read_back(*args)

    monkeypatch.setattr(distributed, "all_sum", after_the_last_step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metrics = loop.train_epoch(state, settings, 1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(metrics["train_loss"]) and metrics["train_acc"] > 0.1


def test_a_run_on_the_gpu_resumes_to_the_uninterrupted_result_bit_for_bit(tiny_cfg, store_uri, tmp_path):
    """With trainer.deterministic=true: the same weights and history after a stop in epoch 2 and a resume."""
    common = (*ON_GPU, *FAST, "trainer.deterministic=true")
    train.run(tiny_cfg(*common, "tracking.run_name=full"), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(*common, "tracking.run_name=cut"), tmp_path / "cut", **ctrl_c_in_epoch(2))
    resume(tiny_cfg(), runs_by_name(store_uri)["cut"].info.run_id)
    runs = runs_by_name(store_uri)
    full, cut = runs["full"], runs["cut"]
    assert (
        cut.info.status == "FINISHED" and cut.data.tags["resumed_at_epoch"] == "2" and cut.data.tags["device"] == "cuda"
    )
    assert cut.data.tags["weights_sha256"] == full.data.tags["weights_sha256"]
    assert history(store_uri, cut.info.run_id) == history(store_uri, full.info.run_id)


@pytest.mark.slow
def test_a_run_resumed_in_a_fresh_process_computes_as_the_uninterrupted_one(tiny_cfg, store_uri, tmp_path):
    """The process that resumes never chooses a precision (the checkpoint holds it), yet its fp32
    matmuls use TF32 as the first process's did: the same weights, bit for bit. In one process the
    setting would persist from the first run and hide a resume that never sets it."""
    common = (*ON_GPU, *FAST, "trainer.deterministic=true", "trainer.precision=fp32")
    train.run(tiny_cfg(*common, "tracking.run_name=full"), tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train.run(tiny_cfg(*common, "tracking.run_name=cut"), tmp_path / "cut", **ctrl_c_in_epoch(2))
    cut = runs_by_name(store_uri)["cut"].info.run_id
    out = processes.run([*processes.TRAIN, f"resume={cut}", f"tracking.uri={store_uri}"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = runs_by_name(store_uri)
    assert runs["cut"].info.status == "FINISHED" and runs["cut"].data.tags["resumed_at_epoch"] == "2"
    assert runs["cut"].data.tags["weights_sha256"] == runs["full"].data.tags["weights_sha256"]


def test_system_metrics_read_the_gpus_utilisation_and_memory():
    """What tracking.system_metrics=true logs on a GPU, through nvidia-ml-py (a dependency)."""
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    monitor = GPUMonitor()
    monitor.collect_metrics()
    figures = monitor.aggregate_metrics()
    assert {"gpu_0_utilization_percentage", "gpu_0_memory_usage_megabytes"} <= set(figures), figures


@pytest.mark.slow
def test_ddp_over_nccl_trains_one_run(tiny_root, store_uri, tmp_path):
    """One process on one GPU under torchrun: NCCL for the gradients, the step eager (no capture under DDP)."""
    out = processes.run(
        processes.ddp_command(1, tiny_root, store_uri, "trainer.device=cuda", "trainer.epochs=2"), tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = only_run(store_uri)
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "1" and run.data.tags["device"] == "cuda:0"
    assert run.data.metrics["test_acc"] > 0.5


@pytest.mark.slow
def test_a_whole_run_on_the_gpu_through_the_command_line(tiny_root, store_uri, tmp_path):
    """`mnist-cnn-train trainer.device=cuda ...`: captured steps by default, every epoch logged, the model tested."""
    out = processes.run(
        processes.train_command(tiny_root, store_uri, *ON_GPU, "trainer.epochs=2", "scheduler=cosine"), tmp_path
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = only_run(store_uri)
    assert run.info.status == "FINISHED" and run.data.tags["device"] == "cuda"
    assert [m.step for m in MlflowClient(store_uri).get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert run.data.metrics["test_acc"] > 0.5
