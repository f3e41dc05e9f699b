"""trainer.cuda_graph on any machine: which runs capture their step, what the config refuses, the
optimizer settings a capture needs and their undoing, the CPU epoch left as the plain PyTorch
loop, bit for bit, and, with torch.cuda's streams and graphs stood in for on the CPU, one capture a
run and a failed capture that the run survives. The capture itself runs on a GPU, in tests/test_gpu.py."""

import logging
import re

import pytest
import torch
import torch.nn.functional as F

from mnist_cnn.config.checks import check_config
from mnist_cnn.config.job import JobContext, Torchrun
from mnist_cnn.data.splits import batches
from mnist_cnn.engine import graphs, loop, repro
from mnist_cnn.engine.optim import build_optimizer, build_scheduler
from mnist_cnn.engine.precision import autocast
from mnist_cnn.errors import ConfigError
from mnist_cnn.runner import setup, train
from tests.helpers.config import make_cfg
from tests.helpers.cuda import GRAPHED, CudaOnTheCpu, captured_on_the_cpu
from tests.helpers.mlflow_store import all_runs, only_run
from tests.helpers.state import fresh_state

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.mark.parametrize(
    "overrides, device, captured",
    [
        ([], CUDA, True),
        ([], CPU, False),
        (["trainer.strategy=ddp"], CUDA, False),
        (["trainer.compile=true"], CUDA, False),
        (["trainer.cuda_graph=false"], CUDA, False),
        (["trainer.cuda_graph=true"], CUDA, True),
    ],
    ids=["null-cuda", "null-cpu", "null-ddp", "null-compile", "false", "true"],
)
def test_null_captures_the_step_on_cuda_except_under_ddp_or_compile(overrides, device, captured):
    assert graphs.captures(make_cfg(overrides).trainer, device) is captured


def test_true_on_a_device_that_resolved_to_the_cpu_is_refused():
    """trainer.device=auto on a machine without a GPU: only known once the device is resolved."""
    with pytest.raises(
        ConfigError, match="trainer.cuda_graph=true needs a CUDA GPU but the run is on cpu; set it to null"
    ):
        graphs.captures(make_cfg(["trainer.cuda_graph=true"]).trainer, CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="trainer.device=auto resolves to the GPU here")
def test_true_where_auto_found_no_gpu_fails_before_a_run_opens(tiny_cfg, store_uri, tmp_path):
    with pytest.raises(ConfigError, match="trainer.cuda_graph=true needs a CUDA GPU but the run is on cpu"):
        train.run(tiny_cfg("trainer.device=auto", "trainer.cuda_graph=true"), tmp_path / "out")
    assert all_runs(store_uri) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["trainer.device=cpu"],
            "trainer.cuda_graph=true needs a GPU but trainer.device=cpu; set trainer.cuda_graph to null",
        ),
        (
            ["trainer.device=auto", "trainer.strategy=ddp"],
            "trainer.cuda_graph=true does not work with trainer.strategy=ddp (its all-reduce hooks); set",
        ),
        (
            ["trainer.device=auto", "trainer.compile=true"],
            "trainer.cuda_graph=true with trainer.compile=true: compile has CUDA graphs of its own; set",
        ),
    ],
    ids=["cpu", "ddp", "compile"],
)
def test_true_where_no_capture_can_happen_is_a_config_error(overrides, message):
    under_torchrun = JobContext(torchrun=Torchrun(0, 1, 0))  # where trainer.strategy=ddp passes its own checks
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(make_cfg(["trainer.cuda_graph=true", *overrides]), under_torchrun)
    for value in ("null", "false"):  # never an error: off where no capture can happen
        check_config(make_cfg([f"trainer.cuda_graph={value}", *overrides]), under_torchrun)


@pytest.mark.parametrize(
    "optimizer, scheduler, in_graph",
    [
        ("adam", "none", True),
        ("adamw", "cosine", True),
        ("sgd", "step", True),
        ("adam", "onecycle", False),
        ("sgd", "onecycle", False),
    ],
)
def test_the_optimizer_steps_inside_the_graph_unless_the_scheduler_cycles_momentum(optimizer, scheduler, in_graph):
    """OneCycleLR sets beta1 (Adam) or momentum (SGD) to a new Python float every step: a graph
    would keep the captured one."""
    cfg = make_cfg([f"optimizer={optimizer}", f"scheduler={scheduler}"])
    built = build_optimizer(cfg.optimizer, torch.nn.Linear(2, 2).parameters())
    assert graphs.optimizer_in_graph(built, build_scheduler(cfg.scheduler, built, 10, 2)) is in_graph
    # no capturable step
    assert not graphs.optimizer_in_graph(torch.optim.RMSprop(torch.nn.Linear(2, 2).parameters()), None)


@pytest.mark.parametrize("name, flag", [("adam", "capturable"), ("adamw", "capturable"), ("sgd", "fused")])
def test_the_settings_for_a_capture_are_undone_where_the_run_continues_eagerly(name, flag):
    """A run captured on a GPU and resumed on a CPU gets back build_optimizer's settings (lr a float,
    Adam's step counts on the CPU); an optimizer never captured is left exactly as it was."""
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(make_cfg([f"optimizer={name}"]).optimizer, model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    built = [dict(group) for group in optimizer.param_groups]
    graphs._eager_settings(optimizer)
    assert optimizer.param_groups == built
    graphs._graph_settings(optimizer, CPU)
    group = optimizer.param_groups[0]
    assert (
        group[flag] is True
        and group["lr"].dtype == torch.float32
        and group["lr"].item() == pytest.approx(built[0]["lr"])
    )
    graphs._eager_settings(optimizer)
    assert group[flag] == optimizer.defaults[flag] and isinstance(group["lr"], float)
    assert group["lr"] == pytest.approx(built[0]["lr"]) and all(
        s["step"].is_cpu for s in optimizer.state.values() if "step" in s
    )


def plain_epoch(model, split, cfg, optimizer, scheduler, generator, epoch):
    """The epoch as train_epoch ran it before engine.graphs: PyTorch's loop, op by op."""
    loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
    d = cfg.data
    for images, labels in batches(
        split, d.batch_size, generator, d.drop_last, cfg.trainer.limit_batches, augment=d.augment
    ):
        with autocast(images.device, cfg.trainer.precision):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.trainer.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach().float() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen}


@pytest.mark.parametrize("overrides", [("optimizer=adam", "scheduler=onecycle"), ("optimizer=sgd", "scheduler=step")])
def test_on_the_cpu_an_epoch_is_the_plain_pytorch_loop_bit_for_bit(tiny_cfg, overrides):
    cfg = tiny_cfg(
        "model=bn_cnn",
        "trainer.device=cpu",
        "trainer.precision=fp32",
        "data.batch_size=48",
        "data.augment.rotate=10",
        *overrides,
    )
    results = []
    for ours in (False, True):
        state, settings = fresh_state(cfg)
        if ours:
            metrics = loop.train_epoch(state, settings, 1)
        else:
            metrics = plain_epoch(
                state.model, state.splits["train"], cfg, state.optimizer, state.scheduler, state.generator, 1
            )
        results.append((metrics, repro.weights_sha256(state.model), state.optimizer.param_groups[0]["lr"]))
    assert results[0] == results[1]


def test_a_run_makes_one_stream_and_captures_its_step_once(tiny_cfg, monkeypatch):
    """Not a new stream and capture every epoch (cuBLAS keeps a workspace per stream): after its
    warm-up the run replays one graph, epoch after epoch; the partial batch stays eager."""
    cuda = CudaOnTheCpu(monkeypatch)
    state, settings = captured_on_the_cpu(tiny_cfg(*GRAPHED, "trainer.epochs=3"), cuda)
    for epoch in (1, 2, 3):
        loop.train_epoch(state, settings, epoch)
    full_batches = 3 * (len(state.splits["train"]) // 48)
    assert len(cuda.streams) == 1 and len(cuda.graphs) == 1
    assert cuda.graphs[0].replays == full_batches - graphs.WARMUP and cuda.current == [cuda.main]
    assert cuda.allocator == [("_cuda_endAllocateToPool", (0, 7))] and cuda.routing == set()


def fail_a_capture(cfg, monkeypatch, caplog, fails: str):
    """Two epochs of `cfg` whose capture fails as `fails` says: the epochs' metrics, the state, the
    stand-in, the one warning logged and the number of forward passes the model ran."""
    cuda = CudaOnTheCpu(monkeypatch, fails)
    state, settings = captured_on_the_cpu(cfg, cuda)
    forwards = []
    state.model.register_forward_pre_hook(lambda module, inputs: forwards.append(1))
    with caplog.at_level(logging.WARNING, logger=graphs.__name__):
        got = [loop.train_epoch(state, settings, epoch) for epoch in (1, 2)]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert cuda.current == [cuda.main] and len(cuda.graphs) == 1 and cuda.graphs[0].replays == 0
    assert cuda.graphs[0].was_reset and cuda.routing == set()  # the allocator routes to no graph's pool
    return got, state, cuda, warning, len(forwards)


def test_a_failed_capture_trains_that_batch_and_the_rest_eagerly(tiny_cfg, monkeypatch, caplog):
    """The capture's own error, once; the main stream current again; the allocator no longer routing
    to the graph's pool, which is released; and the epochs those of trainer.cuda_graph=false, bit for bit."""
    cfg = tiny_cfg(*GRAPHED, "trainer.epochs=2")
    eager, settings = fresh_state(cfg)
    expected = [loop.train_epoch(eager, settings, epoch) for epoch in (1, 2)]
    got, state, cuda, warning, _ = fail_a_capture(cfg, monkeypatch, caplog, CudaOnTheCpu.IN_STEP)
    assert got == expected and repro.weights_sha256(state.model) == repro.weights_sha256(eager.model)
    assert state.step.failure == CudaOnTheCpu.CAUSE
    assert f"CUDA graph failed ({CudaOnTheCpu.CAUSE})" in warning and "trainer.cuda_graph=false" in warning
    assert cuda.allocator == [("_cuda_endAllocateToPool", (0, 7)), ("_cuda_releasePool", (0, 7))]


def test_a_capture_whose_instantiation_runs_out_of_memory_trains_on_eagerly_and_releases_its_pool_once(
    tiny_cfg, monkeypatch, caplog
):
    """capture_end itself raises after it told the allocator the capture ended: _abandon's own
    endAllocateToPool is refused ("already told"), so the pool is left to reset to release, never
    released twice. (The stand-in ran the captured step on the CPU, which a GPU's capture does not,
    so the epochs are not compared with eager ones here: the failure in the step above does that.)"""
    cfg = tiny_cfg(*GRAPHED, "trainer.epochs=2")
    got, state, cuda, warning, forwards = fail_a_capture(cfg, monkeypatch, caplog, CudaOnTheCpu.AT_INSTANTIATE)
    assert state.step.failure == CudaOnTheCpu.OUT_OF_MEMORY
    assert f"CUDA graph failed ({CudaOnTheCpu.OUT_OF_MEMORY})" in warning
    assert cuda.allocator == [("_cuda_endAllocateToPool", (0, 7))]  # by capture_end; no _cuda_releasePool
    batches_trained = 2 * -(-len(state.splits["train"]) // 48)  # every batch, the partial one too
    assert forwards == batches_trained + 1  # each batch once, eagerly, and the one capture


def test_a_run_whose_capture_failed_finishes_tagged_with_the_cause(tiny_cfg, store_uri, tmp_path, monkeypatch):
    cuda = CudaOnTheCpu(monkeypatch, CudaOnTheCpu.IN_STEP)
    monkeypatch.setattr(graphs, "captures", lambda trainer, device: True)
    built = setup.build_model

    def build_model(*args):  # the run's own model, failing as a step that cannot be captured fails
        model = built(*args)
        model.register_forward_pre_hook(cuda.check_forward)
        return model

    monkeypatch.setattr(setup, "build_model", build_model)
    train.run(tiny_cfg(*GRAPHED, "trainer.epochs=2"), tmp_path / "out")
    run = only_run(store_uri)
    assert run.info.status == "FINISHED" and run.data.tags["cuda_graph"] == f"failed: {CudaOnTheCpu.CAUSE}"
