"""The training story: check everything, then train, evaluate and record one run.

`run(cfg, output_dir)` is what `mnist-cnn-train` calls after Hydra has composed the config. Every
check that can fail on a bad config or bad data happens before an MLflow run is opened (setup), so
a bad config never leaves a run behind. Each epoch ends with a checkpoint on local disk, then its
metrics and the checkpoint in MLflow (record). With `resume=RUN_ID` or `resume=path/last.pt` it
continues that run where the uninterrupted run would have been, bit for bit (start). In a sweep, a
pruner may stop the run after an epoch (sweep.prune). With trainer.strategy=ddp every process
torchrun starts runs this story on its share of each batch, and only rank 0 records it
(engine.distributed).
"""

import logging
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Dict, Optional

from omegaconf import DictConfig

from mnist_cnn import interrupts, names
from mnist_cnn.config.job import Outcome
from mnist_cnn.engine import distributed
from mnist_cnn.engine.distributed import SINGLE, World
from mnist_cnn.engine.early_stopping import EarlyStopping
from mnist_cnn.engine.loop import StepSettings, check_divergence, evaluate, train_epoch
from mnist_cnn.engine.state import TrainingState
from mnist_cnn.errors import Pruned
from mnist_cnn.model.build import count_params
from mnist_cnn.runner.record import save_and_log_epoch, test_and_log_model
from mnist_cnn.runner.setup import build_state, prepare
from mnist_cnn.runner.start import StartPoint, where_to_start
from mnist_cnn.sweep.prune import JobPruner, sweep_pruner
from mnist_cnn.tracking.run import Opening, tracked_run
from mnist_cnn.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def run(cfg: DictConfig, output_dir: Path, until: Optional[int] = None) -> Outcome:
    """Train `cfg` (or continue run `cfg.resume`) to the end; returns how it ended: the final metrics
    (also logged), its run, the epoch it was pruned at. Under torchrun, every process calls this and
    rank 0 decides where the run starts. `until`: stop after that epoch, untested (the config, and
    so every epoch before, unchanged: mnist-cnn-verify --epochs)."""
    interrupts.reset()
    with distributed.process_group(join=cfg.trainer.strategy == "ddp" or bool(cfg.resume)) as world:
        start, done = distributed.from_main(world, where_to_start, cfg, world.size)
        if done is not None:
            return done
        return fit(start, output_dir, world if start.cfg.trainer.strategy == "ddp" else SINGLE, until)


def fit(start: StartPoint, output_dir: Path, world: World = SINGLE, until: Optional[int] = None) -> Outcome:
    """Train from `start` to the last epoch, then test and log the model; every rank trains, rank 0 records."""
    cfg = start.cfg
    prepared = distributed.on_every_rank(world, prepare, cfg, world)
    state, settings, precision_tags = build_state(cfg, prepared, start.checkpoint, world)
    tags = {**prepared.tags, **precision_tags, **({names.RESUMED_AT_EPOCH: str(state.epoch + 1)} if cfg.resume else {})}
    params = {
        names.N_PARAMS: count_params(state.model),
        "trainer.precision": state.precision,
    }  # the precision it resolved
    checkpoint = output_dir / "checkpoints" / "last.pt"
    opening = Opening(params, tags, prepared.dataset)
    pruner = sweep_pruner(cfg) if world.main else None
    early = EarlyStopping.of(cfg)
    recorded = tracked_run(cfg, opening, start.run_id, checkpoint) if world.main else nullcontext(Tracker(None, None))
    tracker = Tracker(None, None)
    try:
        with ExitStack() as stack:
            # a store that cannot open stops every rank
            tracker = distributed.on_every_rank(world, stack.enter_context, recorded)
            stack.enter_context(interrupts.graceful())
            if state.history:
                tracker.reconcile(state.history[-1], state.epoch)
            state.clock.first_step()
            for epoch in range(state.epoch + 1, min(cfg.trainer.epochs, until or cfg.trainer.epochs) + 1):
                state.history.append(
                    train_and_validate(state, settings, epoch, len(prepared.classes), cfg.data.eval_batch_size, world)
                )
                if world.main:  # the only rank with side effects
                    if early is not None:  # before the checkpoint, which carries the best weights
                        state.keep_if_best(early.best_epoch(state.history))
                    with state.clock.phase("checkpoint"):
                        save_and_log_epoch(cfg, tracker, state, len(prepared.classes), checkpoint)
                if end_of_epoch(world, tracker, pruner, state.history, epoch == cfg.trainer.epochs, early):
                    if world.main:
                        stopped_early(tracker, state, early.metric)
                    break
            if not world.main or until is not None and state.epoch >= until:
                return Outcome(state.history[-1], tracker.run_id)
            ended = ended_with(cfg, tracker, state, early)
            final, weights = test_and_log_model(cfg, tracker, state, prepared.classes)
    except Pruned as e:
        return Outcome(state.history[-1], tracker.run_id, e.epoch)
    return Outcome({**state.history[ended - 1], **final}, tracker.run_id, weights_sha256=weights)


def stopped_early(tracker: Tracker, state: TrainingState, metric: str) -> None:
    """Tag the run, and say, that early stopping ended it after the epoch just completed."""
    tracker.set_tags({names.STOPPED_EARLY_AT: str(state.epoch)})
    log.info("stopped early after epoch %d: %s not better since epoch %d", state.epoch, metric, state.best["epoch"])


def ended_with(cfg: DictConfig, tracker: Tracker, state: TrainingState, early: Optional[EarlyStopping]) -> int:
    """The epoch whose weights the run tests and logs: with early stopping and trainer.restore_best,
    its best (tagged `restored_epoch`), else its last."""
    if early is None or not cfg.trainer.restore_best:
        return state.epoch
    epoch = state.restore_best()
    tracker.set_tags({names.RESTORED_EPOCH: str(epoch)})
    return epoch


def end_of_epoch(
    world: World, tracker: Tracker, pruner: Optional[JobPruner], history, last: bool, early: Optional[EarlyStopping]
) -> bool:
    """Every rank ends the epoch alike: pruned (the sweep's pruner, asked by rank 0), stopped (Ctrl-C
    or SIGTERM on any rank), done (early stopping, judged by rank 0, which scores validation: True),
    or on to the next (False)."""
    prune = bool(pruner and not last and tracker.call(pruner.should_prune, tracker.client, tracker.run_id, history))
    done = bool(early and world.main and not last and early.stops(history))
    stop, prune, done = distributed.agree(world, interrupts.requested(), prune, done)
    if prune:
        raise Pruned(len(history))
    if stop:
        raise KeyboardInterrupt("stop requested")
    return done


def train_and_validate(
    state: TrainingState, settings: StepSettings, epoch: int, classes: int, eval_batch: int, world: World = SINGLE
) -> Dict[str, float]:
    """One epoch: train, stop on divergence, then time it and score the validation split (rank 0
    alone, on the whole split: only it logs the result)."""
    clock = state.clock
    with clock.phase("train") as lap:
        metrics = train_epoch(state, settings, epoch, world)
        check_divergence(metrics, classes, epoch)  # the global epoch's: every rank stops alike
    samples = min(len(state.splits["train"]), state.steps_per_epoch * settings.batch_size)
    lr = float(state.optimizer.param_groups[0]["lr"])
    metrics.update({names.LR: lr, names.EPOCH_TIME: lap.seconds, names.SAMPLES_PER_S: samples / lap.seconds})
    if state.splits["val"] is not None and world.main:
        with clock.phase("val") as lap:
            val = evaluate(distributed.unwrap(state.forward), state.splits["val"], eval_batch, state.precision)
        metrics.update({names.VAL_LOSS: val["loss"], names.VAL_ACC: val["acc"], names.VAL_TIME: lap.seconds})
    return metrics
