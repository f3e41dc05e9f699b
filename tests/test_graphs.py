"""trainer.cuda_graph on any machine: which runs capture their step, what the config refuses, the
optimizer settings a capture needs and their undoing, and the CPU epoch left as the plain PyTorch
loop, bit for bit. The capture itself runs on a GPU, in tests/test_gpu.py."""

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
from mnist_cnn.runner import train
from tests.helpers.config import make_cfg
from tests.helpers.mlflow_store import all_runs
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
        train.run(tiny_cfg("trainer.cuda_graph=true"), tmp_path / "out")
    assert all_runs(store_uri) == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["trainer.device=cpu"],
            "trainer.cuda_graph=true needs a GPU but trainer.device=cpu; set trainer.cuda_graph to null",
        ),
        (
            ["trainer.strategy=ddp"],
            "trainer.cuda_graph=true does not work with trainer.strategy=ddp (its all-reduce hooks); set",
        ),
        (
            ["trainer.compile=true"],
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
