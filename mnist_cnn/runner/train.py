"""The training story: check everything, then train, evaluate and record one run.

`run(cfg, output_dir, ctx, hooks)` is what `mnist-cnn-train` calls after Hydra has composed the
config, with the job's context (config.job) and, for a sweep's job, its pruner (sweep.prune). Every
check that can fail on a bad config or bad data happens before an MLflow run is opened (setup), so
a bad config never leaves a run behind. Each epoch ends with a checkpoint on local disk, then its
metrics and the checkpoint in MLflow (record), then the epoch hooks (hooks): a pruner, a stop
request or early stopping may end the run there. A job that restarts (`resume=`, `resume_sweep=`,
a Slurm requeue) continues its run where the uninterrupted run would have been, bit for bit
(start). With trainer.strategy=ddp every process torchrun starts runs this story on its share of
each batch, and only rank 0 records it (engine.distributed).
"""

import logging
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from omegaconf import DictConfig

from mnist_cnn import names
from mnist_cnn.config.job import JobContext
from mnist_cnn.engine import distributed
from mnist_cnn.engine.distributed import SINGLE, World
from mnist_cnn.engine.early_stopping import EarlyStopping
from mnist_cnn.engine.loop import StepSettings, check_divergence, evaluate, train_epoch
from mnist_cnn.engine.state import TrainingState
from mnist_cnn.errors import Pruned
from mnist_cnn.model.build import count_params
from mnist_cnn.runner.hooks import EpochHook, History, run_hooks
from mnist_cnn.runner.outcome import Outcome
from mnist_cnn.runner.record import save_and_log_epoch, test_and_log_model
from mnist_cnn.runner.setup import build_state, prepare
from mnist_cnn.runner.start import StartPoint, where_to_start
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.run import Opening, record_failed_job, tracked_run
from mnist_cnn.tracking.states import RunState
from mnist_cnn.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def run(
    cfg: DictConfig,
    output_dir: Path,
    ctx: Optional[JobContext] = None,
    hooks: Sequence[EpochHook] = (),
    until: Optional[int] = None,
) -> Outcome:
    """Train `cfg` (or continue the run it restarts) to the end; returns how it ended: the final
    metrics (also logged), its run, the epoch it was pruned at. `ctx`: the job (None: a job alone,
    as a script or a test runs it); `hooks`: what may end the run after an epoch besides its own
    early stopping and stop requests (a sweep's pruner). Under torchrun, every process calls this
    and rank 0 decides where the run starts. `until`: stop after that epoch, untested (the config,
    and so every epoch before, unchanged: mnist-cnn-verify --epochs). A job of a sweep that fails
    returns an empty Outcome, after recording the failure: one failed job must not end the sweep."""
    ctx = ctx or JobContext()
    with distributed.process_group(cfg.trainer.strategy == "ddp" or bool(cfg.resume), ctx.torchrun) as world:
        try:
            start = distributed.from_main(world, where_to_start, cfg, ctx, world.size)
            if isinstance(start, Outcome):
                return start
            return fit(start, output_dir, ctx, world if start.cfg.trainer.strategy == "ddp" else SINGLE, hooks, until)
        except Exception as e:
            if not ctx.multirun:
                raise
            log.error("job failed, the sweep goes on: %s", redact(f"{type(e).__name__}: {e}"))
            return Outcome({})


def fit(
    start: StartPoint,
    output_dir: Path,
    ctx: JobContext,
    world: World = SINGLE,
    hooks: Sequence[EpochHook] = (),
    until: Optional[int] = None,
) -> Outcome:
    """Train from `start` to the last epoch (or until a hook ends the run), then test and log the
    model; every rank trains, rank 0 records."""
    cfg = start.cfg
    try:
        prepared = distributed.on_every_rank(world, prepare, cfg, ctx, world)
        state, settings, precision_tags = build_state(cfg, ctx, prepared, start.checkpoint, world)
    except Exception as e:
        record_unopened(start, ctx, e)
        raise
    early = EarlyStopping.of(cfg)
    hooks = run_hooks(hooks, ctx.stops, early, cfg.trainer.epochs)
    checkpoint = output_dir / "checkpoints" / "last.pt"
    opening = Opening(
        opening_params(state), {**prepared.tags, **precision_tags, **restart_tags(start, state)}, prepared.dataset
    )
    recorded = (
        tracked_run(cfg, ctx, opening, start.run_id, checkpoint) if world.main else nullcontext(Tracker(None, None))
    )
    tracker = Tracker(None, None)
    try:
        with ExitStack() as stack:
            # a store that cannot open stops every rank
            tracker = distributed.on_every_rank(world, stack.enter_context, recorded)
            stack.enter_context(ctx.stops.graceful())
            for hook in hooks if world.main else ():
                hook.opened(tracker)
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
                        save_and_log_epoch(cfg, tracker, state, prepared.network, checkpoint)
                if end_of_epoch(world, tracker, hooks, state.history):
                    if world.main:
                        stopped_early(tracker, state, early.metric)
                    break
            if not world.main or until is not None and state.epoch >= until:
                return Outcome(state.history[-1], tracker.run_id)
            ended = ended_with(cfg, tracker, state, early)
            final, weights = test_and_log_model(cfg, ctx, tracker, state, prepared.classes, prepared.network)
    except Pruned as e:
        return Outcome(state.history[-1], tracker.run_id, e.epoch)
    return Outcome({**state.history[ended - 1], **final}, tracker.run_id, weights_sha256=weights)


def opening_params(state: TrainingState) -> Dict[str, object]:
    """What a new run logs as params besides its config: the model's size, the precision it
    resolved and the threads torch trains with."""
    return {
        names.N_PARAMS: count_params(state.model),
        "trainer.precision": state.precision,
        names.TORCH_THREADS: torch.get_num_threads(),
    }


def restart_tags(start: StartPoint, state: TrainingState) -> Dict[str, str]:
    """A continued run's tags: the epoch it continues at and what restarted it."""
    if start.restart is None:
        return {}
    return {names.RESUMED_AT_EPOCH: str(state.epoch + 1), names.RESTART: start.restart.kind.value}


def record_unopened(start: StartPoint, ctx: JobContext, error: Exception) -> None:
    """A job of a tracked sweep that fails before it has a run of its own (its config or data, on
    `prepare`'s checks) still gets one, FAILED, with its config's fingerprint: the parent's report
    counts it, and a resumed sweep does not run it again."""
    if ctx.sweep is None or start.run_id is not None or not start.cfg.tracking.enabled:
        return
    try:
        record_failed_job(start.cfg, ctx, error)
    except Exception as e:  # noqa: BLE001 - the store itself may be what failed
        log.warning("could not record the failed job in MLflow: %s", redact(str(e))[:300])


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


def end_of_epoch(world: World, tracker: Tracker, hooks: Sequence[EpochHook], history: History) -> bool:
    """Every rank ends the epoch alike, as the first hook that stops the run says (rank 0 asks them
    all, the others those that are `every_rank`; one vote): pruned (raises Pruned), stopped by a
    signal (raises KeyboardInterrupt), done (early stopping: True); or on to the next (False)."""
    asked = [(world.main or hook.every_rank) and bool(tracker.call(hook.should_stop, history)) for hook in hooks]
    ending = next((hook.ends for hook, stop in zip(hooks, distributed.agree(world, *asked)) if stop), None)
    if ending is RunState.PRUNED:
        raise Pruned(len(history))
    if ending is RunState.STOPPED:
        raise KeyboardInterrupt("stop requested")
    return ending is RunState.FINISHED


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
