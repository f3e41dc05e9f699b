"""The training story: check everything, then train, evaluate and record one run.

`run(cfg, output_dir)` is what `mnist-cnn-train` calls after Hydra has composed the config. Every
check that can fail on a bad config or bad data happens before an MLflow run is opened, so a bad
config never leaves a run behind. Each epoch ends with a checkpoint on local disk, then its metrics
and the checkpoint in MLflow (and the epoch's model, with trainer.keep_best). With `resume=RUN_ID`
or `resume=path/last.pt` it continues that run where the uninterrupted run would have been, bit for
bit. In a sweep, a pruner may stop the run after an epoch (sweep.prune); a job of a resumed sweep,
or one that Slurm requeued, first looks for its earlier run (sweep.resume). With
trainer.strategy=ddp every process torchrun starts runs this story on its share of each batch, and
only rank 0 records it (engine.distributed).
"""

import hashlib
import logging
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_cnn import interrupts
from mnist_cnn.config.checks import check_config
from mnist_cnn.config.job import in_multirun, job_overrides, slurm_restarts
from mnist_cnn.data.datasets import IMAGE_SHAPE, dataset_info
from mnist_cnn.data.idx import load_split
from mnist_cnn.data.splits import num_batches, split_validation
from mnist_cnn.engine import distributed, graphs, precision, repro
from mnist_cnn.engine.checkpoint import save_checkpoint
from mnist_cnn.engine.distributed import SINGLE, World
from mnist_cnn.engine.loop import check_divergence, evaluate, resolve_device, train_epoch
from mnist_cnn.engine.optim import build_optimizer, build_scheduler
from mnist_cnn.engine.resume import StartPoint, start_point
from mnist_cnn.errors import ConfigError, Pruned
from mnist_cnn.model.build import build_model, count_params, summary
from mnist_cnn.report.metrics import score
from mnist_cnn.timing import Stopwatch
from mnist_cnn.tracking.redact import redact

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: Path) -> Dict[str, float]:
    """Train `cfg` (or continue run `cfg.resume`) to the end; returns the final metrics (also logged).
    Under torchrun, every process calls this and rank 0 decides where the run starts."""
    interrupts.reset()
    with distributed.process_group(cfg) as world:
        start, done = distributed.from_main(world, where_to_start, cfg, world.size)
        if done is not None:
            return done
        return fit(start, output_dir, world if start.cfg.trainer.strategy == "ddp" else SINGLE)


def where_to_start(cfg: DictConfig, world_size: int = 1) -> Tuple[Optional[StartPoint], Optional[Dict[str, float]]]:
    """The run to train or continue, with its config and checkpoint; or the metrics of a sweep's job
    that is already done."""
    if cfg.resume_sweep or slurm_restarts():
        from mnist_cnn.sweep.resume import job_start, starts_again

        cfg, done = job_start(cfg) if starts_again(cfg) else (cfg, None)
        if done is not None:
            return None, done
    start = start_point(cfg, job_overrides()) if cfg.resume else StartPoint(cfg, None, None)
    if world_size > 1 and start.cfg.trainer.strategy != "ddp":  # a resumed run keeps its own strategy
        raise ConfigError(f"resume={cfg.resume}: that run trained with trainer.strategy=single; continue it without torchrun.")
    return start, None


def fit(start: StartPoint, output_dir: Path, world: World = SINGLE) -> Dict[str, float]:
    """Train from `start` to the last epoch, then test and log the model; every rank trains, rank 0 records."""
    cfg = start.cfg
    model, splits, tags, dataset = distributed.on_every_rank(world, prepare, cfg, world)
    device = splits["train"].labels.device
    tags.update(resolve_precision(cfg, model, device, world))
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    steps = num_batches(len(splits["train"]), cfg.data.batch_size, cfg.data.drop_last, cfg.trainer.limit_batches, world.size)
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps, cfg.trainer.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)  # epoch permutations, apart from the global RNG (alike on every rank)
    first_epoch, history = 1, []  # history: each epoch's metrics, for the learning curves
    sync = torch.cuda.synchronize if device.type == "cuda" else None  # GPU timings wait for the queued work
    clock = Stopwatch(sync, start.checkpoint.get("timing") if start.checkpoint else None)  # adds up over a resumed run
    if start.checkpoint is not None:
        first_epoch = restore(start.checkpoint, model, optimizer, scheduler, generator) + 1
        history = start.checkpoint.get("history", [])
    if cfg.resume:
        tags["resumed_at_epoch"] = str(first_epoch)
    from mnist_cnn.tracking.run import Opening, Tracker, tracked_run  # MLflow takes seconds to import: once every check passed

    checkpoint = output_dir / "checkpoints" / "last.pt"
    opening = Opening({"n_params": count_params(model)}, tags, dataset)
    pruner = _pruner(cfg) if world.main else None
    recorded = tracked_run(cfg, opening, start.run_id, checkpoint) if world.main else nullcontext(Tracker(None, None))
    try:
        with ExitStack() as stack:
            tracker = distributed.on_every_rank(world, stack.enter_context, recorded)  # a store that cannot open stops every rank
            stack.enter_context(interrupts.graceful())
            if history:
                tracker.reconcile(history[-1], first_epoch - 1)
            forward = torch.compile(model) if cfg.trainer.compile else model  # shares weights with `model`
            trained = distributed.wrap(forward, world, device)
            clock.first_step()
            for epoch in range(first_epoch, cfg.trainer.epochs + 1):
                history.append(train_and_validate(cfg, trained, splits, optimizer, scheduler, generator, epoch, steps, clock, world))
                if world.main:  # the only rank with side effects
                    with clock.phase("checkpoint"):
                        state = dict(model=model, optimizer=optimizer, scheduler=scheduler, generator=generator, timing=clock.state())
                        save_and_log_epoch(cfg, tracker, state, history, epoch, steps, checkpoint)
                last = epoch == cfg.trainer.epochs
                prune = bool(pruner and not last and tracker.call(pruner.should_prune, tracker.client, tracker.run_id, history))
                stop, prune = distributed.agree(world, interrupts.requested(), prune)  # every rank ends the epoch alike
                if prune:
                    raise Pruned(epoch)
                if stop:
                    raise KeyboardInterrupt("stop requested")
            if not world.main:
                return history[-1]
            final = test_and_log_model(cfg, model, forward, splits["test"], tracker, history, clock)
    except Pruned:
        return history[-1]  # the sweeper gets the last value of objective.metric
    return {**history[-1], **final}


def resolve_precision(cfg: DictConfig, model, device: torch.device, world: World) -> Dict[str, str]:
    """Set trainer.precision to what the run uses (engine.precision; rank 0 measures, every rank
    follows), so that it is logged, checkpointed and fingerprinted resolved and a resume keeps it.
    Returns the tags that say why (a resumed run keeps the reason it has) and the config's fingerprint."""
    batch = cfg.data.batch_size // world.size
    choice = distributed.from_main(world, precision.choose, cfg.trainer.precision, model, batch, device)
    log.info("precision %s: %s", choice.precision, "kept from the run being resumed" if cfg.resume else choice.reason)
    cfg.trainer.precision = choice.precision
    return {"config_sha256": repro.config_sha256(cfg), **({} if cfg.resume else {"precision_reason": choice.reason})}


def save_and_log_epoch(cfg: DictConfig, tracker, live: Dict[str, Any], history, epoch: int, steps: int, checkpoint: Path) -> None:
    """The epoch's checkpoint on local disk (its config and run id with it), then in MLflow with its
    metrics. `live`: the model, optimizer, scheduler and data generator, and the seconds spent so far."""
    model, scheduler = live["model"], live["scheduler"]
    state = dict(model=model.state_dict(), optimizer=live["optimizer"].state_dict(), epoch=epoch, global_step=epoch * steps)
    state.update(scheduler=scheduler.state_dict() if scheduler else None, rng=repro.rng_state(live["generator"]), history=history)
    save_checkpoint(checkpoint, {**state, "timing": live["timing"], "config": _config_text(cfg), "run_id": tracker.run_id})
    log_epoch(cfg, tracker, model, history[-1], epoch, checkpoint)
    log.info("epoch %d/%d  %s", epoch, cfg.trainer.epochs, _fmt(history[-1]))


def log_epoch(cfg: DictConfig, tracker, model, metrics: Dict[str, float], epoch: int, checkpoint: Path) -> None:
    """The epoch's metrics and checkpoint; with trainer.keep_best, its model too, linked to its
    metrics, and only the best `keep_best` of those models kept."""
    keep = cfg.trainer.keep_best
    model_id = tracker.log_epoch_model(model, IMAGE_SHAPE, len(dataset_info(cfg.data.name).classes), epoch) if keep else None
    tracker.log_epoch(metrics, epoch, checkpoint, model_id)
    if keep:
        tracker.keep_best(keep, cfg.objective)


def _pruner(cfg: DictConfig):
    if cfg.objective.pruner == "none":
        return None
    from mnist_cnn.sweep.prune import sweep_pruner  # Optuna: only for a pruned sweep

    return sweep_pruner(cfg)


def test_and_log_model(cfg: DictConfig, model, forward, test_split, tracker, history, clock: Stopwatch) -> Dict[str, float]:
    """Score the test split once, after the last epoch, class by class with figures; fingerprint the
    weights; log the model; then where the run's time went."""
    with clock.phase("test"):
        report = score(forward, test_split, dataset_info(cfg.data.name).classes, cfg.data.eval_batch_size, cfg.trainer.precision)
    final = {"test_loss": report.loss, "test_acc": report.accuracy, "train_time_s": train_time_s(history)}
    tracker.log_metrics({**final, **report.class_metrics()}, step=cfg.trainer.epochs)
    with clock.phase("figures"):
        tracker.log_report(report, history)
    tracker.set_tags({"weights_sha256": repro.weights_sha256(model)})
    log.info("test  %s", _fmt(final))
    interrupts.check()
    with clock.phase("model"):
        if cfg.tracking.log_model:
            register_as = None if in_multirun() else cfg.tracking.register_as  # a sweep registers only its champion
            tracker.log_model(model, IMAGE_SHAPE, len(dataset_info(cfg.data.name).classes), register_as, cfg.tracking.register_from)
    interrupts.check()  # a stop asked for while the model was logged: KILLED, resumable, not ignored
    timing = clock.metrics()
    tracker.log_metrics(timing, step=cfg.trainer.epochs)
    log.info("time  %s", _fmt(timing))
    return {**final, **timing}


def train_time_s(history: List[Dict[str, float]]) -> float:
    """The seconds of every epoch with its validation, over all of a resumed run's processes."""
    return sum(h["epoch_time_s"] + h.get("val_time_s", 0.0) for h in history)


def train_and_validate(
    cfg: DictConfig, model, splits, optimizer, scheduler, generator, epoch: int, steps: int, clock: Stopwatch, world: World = SINGLE
) -> Dict[str, float]:
    """One epoch: train, stop on divergence, then time it and score the validation split (rank 0
    alone, on the whole split: only it logs the result)."""
    with clock.phase("train") as lap:
        metrics = train_epoch(model, splits["train"], cfg, optimizer, scheduler, generator, epoch, world=world)
        check_divergence(metrics, len(dataset_info(cfg.data.name).classes), epoch)  # the global epoch's: every rank stops alike
    samples = min(len(splits["train"]), steps * cfg.data.batch_size)
    metrics.update(lr=float(optimizer.param_groups[0]["lr"]), epoch_time_s=lap.seconds, samples_per_s=samples / lap.seconds)
    if splits["val"] is not None and world.main:
        with clock.phase("val") as lap:
            val = evaluate(distributed.unwrap(model), splits["val"], cfg.data.eval_batch_size, cfg.trainer.precision)
        metrics.update(val_loss=val["loss"], val_acc=val["acc"], val_time_s=lap.seconds)
    return metrics


def prepare(cfg: DictConfig, world: World = SINGLE):
    """Every check that can fail on a bad config or bad data, done before tracking starts; returns
    the model on its device, the splits on that device, the run's fingerprint tags (but the config's,
    which waits for the precision) and its dataset."""
    plan = check_config(cfg)
    repro.seed_everything(cfg.seed)  # the same initial weights on every rank
    device = distributed.device_for(world, resolve_device(cfg.trainer.device))
    graphs.captures(cfg.trainer, device)  # trainer.cuda_graph=true where `auto` found no GPU fails here, before a run opens
    deterministic = cfg.trainer.deterministic if cfg.trainer.deterministic is not None else device.type == "cpu"
    repro.set_deterministic(deterministic, compiled=cfg.trainer.compile)
    info = dataset_info(cfg.data.name)
    model = build_model(plan, *((info.mean, info.std) if cfg.data.normalize else ()))
    log.info("model %s on %s:\n%s", cfg.model.name, device, summary(model, plan, IMAGE_SHAPE))
    load = dict(root=cfg.data.root, name=cfg.data.name, download=cfg.data.download, verify=cfg.data.verify_checksums)
    full_train, test = load_split(split="train", **load), load_split(split="test", **load)
    train, val = split_validation(full_train, cfg.data.val_size, cfg.seed)
    num_batches(len(train), cfg.data.batch_size, cfg.data.drop_last, cfg.trainer.limit_batches, world.size)  # an empty epoch fails here
    log.info("data %s: %d train, %d val, %d test images", cfg.data.name, len(train), len(val or []), len(test))
    splits = {"train": train.to(device), "val": val.to(device) if val else None, "test": test.to(device)}
    data_sha256 = hashlib.sha256((full_train.sha256 + test.sha256).encode()).hexdigest()
    tags = {
        "device": str(device),
        "deterministic": str(deterministic),
        "seed": str(cfg.seed),
        "data_sha256": data_sha256,
        "world_size": str(world.size),  # processes that shared each batch
    }
    sizes = {name: len(split) for name, split in splits.items() if split is not None}
    dataset = dict(name=cfg.data.name, folder=str(Path(cfg.data.root) / info.folder / "raw"), sizes=sizes, sha256=data_sha256)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device), splits, tags, dataset


def restore(checkpoint: Dict[str, Any], model, optimizer, scheduler, generator: torch.Generator) -> int:
    """Load a checkpoint's states into the freshly built objects; returns the epoch it completed."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    repro.restore_rng_state(checkpoint["rng"], generator)
    log.info("resuming after epoch %d (step %d)", checkpoint["epoch"], checkpoint["global_step"])
    return checkpoint["epoch"]


def _config_text(cfg: DictConfig) -> str:
    """The resolved config a checkpoint carries, credentials masked (resume takes tracking.uri anew)."""
    return redact(OmegaConf.to_yaml(cfg, resolve=True))


def _fmt(metrics: Dict[str, float]) -> str:
    def one(key: str, value: float) -> str:
        if key == "lr":
            return f"lr {value:.2e}"
        if key.endswith("_s"):
            return f"{key} {value:.1f}"
        return f"{key} {value:.4f}"

    return "  ".join(one(k, v) for k, v in metrics.items())
