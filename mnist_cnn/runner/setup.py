"""Everything a run needs before its first step: the checks, the data and model on their device,
then the training state.

`prepare` does all that can fail on a bad config or bad data, before a run is opened, so a bad
config never leaves a run behind. `build_state` resolves the precision (measured when
`trainer.precision` is null, kept when resuming) and builds the one TrainingState the epochs
change, restored from the checkpoint when the run continues. The config itself is never rewritten:
what the run resolved lives in the state and in the run's tags.
"""

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import DictConfig
from torch import nn

from mnist_cnn import names
from mnist_cnn.config.checks import check_config
from mnist_cnn.config.job import JobContext
from mnist_cnn.config.keys import config_sha256
from mnist_cnn.data.datasets import dataset_info
from mnist_cnn.data.idx import load_split
from mnist_cnn.data.splits import Split, num_batches, split_validation
from mnist_cnn.engine import distributed, graphs, precision, repro
from mnist_cnn.engine.distributed import World
from mnist_cnn.engine.loop import StepSettings, resolve_device
from mnist_cnn.engine.optim import build_optimizer, build_scheduler
from mnist_cnn.engine.state import TrainingState
from mnist_cnn.model.build import build_model, summary
from mnist_cnn.model.network import Network
from mnist_cnn.timing import Stopwatch

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The checked run before its state: model and splits on the device, what it records first."""

    model: nn.Module
    splits: Dict[str, Optional[Split]]  # train, val (None without a validation split), test
    steps_per_epoch: int  # never 0: an empty epoch is a config error
    cuda_graph: bool  # whether each full batch's step replays a captured CUDA graph (engine.graphs.captures)
    classes: Tuple[str, ...]  # the dataset's class names
    network: Network  # what rebuilds the model: logged with it, so that loading it never unpickles
    tags: Dict[str, str]  # fingerprints: device, seed, data and config hashes, ...
    dataset: Dict[str, Any]  # name, folder, sizes (per split), sha256: the run's MLflow input


def prepare(cfg: DictConfig, ctx: JobContext, world: World) -> Prepared:
    """Every check that can fail on a bad config or bad data, done before tracking starts."""
    network = check_config(cfg, ctx)
    repro.seed_everything(cfg.seed)  # the same initial weights on every rank
    if ctx.multirun:  # its share of this machine's cores: jobs side by side would fight over all of them
        torch.set_num_threads(ctx.torch_threads)
    device = distributed.device_for(world, job_device(cfg.trainer.device, ctx))
    captured = graphs.captures(cfg.trainer, device)  # cuda_graph=true without a GPU fails here, before a run opens
    precision.use_tensor_cores(device)  # in every process: a resumed run and every rank compute alike
    deterministic = cfg.trainer.deterministic if cfg.trainer.deterministic is not None else device.type == "cpu"
    repro.set_deterministic(deterministic, compiled=cfg.trainer.compile)
    info, plan = dataset_info(cfg.data.name), network.plan()
    model = build_model(plan, network.mean, network.std)
    log.info("model %s on %s:\n%s", cfg.model.name, device, summary(model, plan, network.in_shape))
    load = dict(root=cfg.data.root, name=cfg.data.name, download=cfg.data.download, verify=cfg.data.verify_checksums)
    full_train, test = load_split(split="train", **load), load_split(split="test", **load)
    train, val = split_validation(full_train.to(device), cfg.data.val_size, cfg.seed)  # both share its images
    steps = num_batches(len(train), cfg.data.batch_size, cfg.data.drop_last, cfg.trainer.limit_batches, world.size)
    log.info("data %s: %d train, %d val, %d test images", cfg.data.name, len(train), len(val or []), len(test))
    splits = {"train": train, "val": val, "test": test.to(device)}
    data_sha256 = hashlib.sha256((full_train.sha256 + test.sha256).encode()).hexdigest()
    tags = {
        names.DEVICE: str(device),
        names.DETERMINISTIC: str(deterministic),
        names.SEED: str(cfg.seed),
        names.DATA_SHA256: data_sha256,
        names.CONFIG_SHA256: config_sha256(cfg),
        names.WORLD_SIZE: str(world.size),
    }
    sizes = {name: len(split) for name, split in splits.items() if split is not None}
    dataset = dict(
        name=cfg.data.name, folder=str(Path(cfg.data.root) / info.folder / "raw"), sizes=sizes, sha256=data_sha256
    )
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Prepared(model.to(device), splits, steps, captured, info.classes, network, tags, dataset)


def job_device(name: str, ctx: JobContext) -> torch.device:
    """trainer.device resolved; `cuda` for a sweep's job that runs beside others on a machine with
    several GPUs is one of them, round robin (JobContext.gpu)."""
    device = resolve_device(name)
    gpu = ctx.gpu(torch.cuda.device_count()) if device.type == "cuda" and device.index is None else None
    if gpu is None:
        return device
    torch.cuda.set_device(gpu)
    return torch.device("cuda", gpu)


def build_state(
    cfg: DictConfig, ctx: JobContext, prepared: Prepared, checkpoint: Optional[Dict[str, Any]], world: World
) -> Tuple[TrainingState, StepSettings, Dict[str, str]]:
    """The run's TrainingState, restored from `checkpoint` when it continues, with job `ctx`'s clock
    and stop requests; the settings of its step loop; and the tags that say which precision it
    trains in and why."""
    model, device = prepared.model, prepared.splits["train"].labels.device
    choice = resolve_precision(cfg, model, device, world, checkpoint, ctx.precision)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    steps = prepared.steps_per_epoch
    forward = torch.compile(model) if cfg.trainer.compile else model  # shares weights with `model`
    state = TrainingState(
        model=model,
        forward=distributed.wrap(forward, world, device),
        optimizer=optimizer,
        scheduler=build_scheduler(cfg.scheduler, optimizer, steps, cfg.trainer.epochs),
        generator=torch.Generator().manual_seed(cfg.seed),
        splits=prepared.splits,
        steps_per_epoch=steps,
        precision=choice.precision,
        clock=Stopwatch(
            ctx.clock,
            torch.cuda.synchronize if device.type == "cuda" else None,
            checkpoint.get("timing") if checkpoint else None,
        ),
        stops=ctx.stops,
    )
    if checkpoint is not None:
        state.restore(checkpoint)
        log.info("resuming after epoch %d (step %d)", checkpoint["epoch"], checkpoint["global_step"])
    kept = checkpoint is not None and "precision" in checkpoint  # a resumed run keeps the reason it was tagged with
    tags = {names.PRECISION: choice.precision, **({} if kept else {names.PRECISION_REASON: choice.reason})}
    return state, step_settings(cfg, prepared.cuda_graph), tags


def resolve_precision(
    cfg: DictConfig,
    model: nn.Module,
    device: torch.device,
    world: World,
    checkpoint: Optional[Dict[str, Any]],
    verified: Optional[str] = None,
) -> precision.Choice:
    """What the run trains in: the checkpoint's precision when it continues, the `verified` run's
    when mnist-cnn-verify trains it again, else trainer.precision, or for null the faster one
    measured (engine.precision; rank 0 measures, every rank follows)."""
    if checkpoint is not None and "precision" in checkpoint:
        choice = precision.Choice(checkpoint["precision"], "kept from the run being resumed")
    elif verified is not None:
        choice = precision.Choice(verified, "kept from the run being verified")
    else:
        batch = cfg.data.batch_size // world.size
        choice = distributed.from_main(world, precision.choose, cfg.trainer.precision, model, batch, device)
    log.info("precision %s: %s", choice.precision, choice.reason)
    return choice


def step_settings(cfg: DictConfig, cuda_graph: bool) -> StepSettings:
    """What the step loop reads from the config, with the CUDA-graph choice resolved (`prepare`)."""
    d = cfg.data
    return StepSettings(
        batch_size=d.batch_size,
        drop_last=d.drop_last,
        limit_batches=cfg.trainer.limit_batches,
        augment=d.augment,
        label_smoothing=cfg.trainer.label_smoothing,
        cuda_graph=cuda_graph,
        progress=cfg.trainer.progress,
    )
