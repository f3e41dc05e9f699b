"""What rank 0 records of a run: each epoch's checkpoint and metrics, and at the end the test
split's report, its figures, the model, and where the time went."""

import logging
from pathlib import Path
from typing import Dict, List, Tuple

from omegaconf import DictConfig, OmegaConf

from mnist_cnn import names
from mnist_cnn.config.job import JobContext
from mnist_cnn.engine import distributed, repro
from mnist_cnn.engine.checkpoint import save_checkpoint
from mnist_cnn.engine.early_stopping import BestEpoch
from mnist_cnn.engine.state import TrainingState
from mnist_cnn.model.network import Network
from mnist_cnn.report.figures import run_figures
from mnist_cnn.report.metrics import score
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def save_and_log_epoch(cfg: DictConfig, tracker: Tracker, state: TrainingState, network: Network, path: Path) -> None:
    """The epoch's checkpoint on local disk (its config and run id with it), then in MLflow with its
    metrics; with trainer.keep_best, the epoch's model too (tagged with its weights' fingerprint),
    linked to its metrics, and only the best `keep_best` of those models kept, as the one rule of the
    best epoch ranks them (engine.early_stopping.BestEpoch)."""
    config = redact(OmegaConf.to_yaml(cfg, resolve=True))  # credentials masked: a resume takes tracking.uri anew
    save_checkpoint(path, {**state.checkpoint(), "config": config, "run_id": tracker.run_id})
    keep, epoch = cfg.trainer.keep_best, state.epoch
    model_id = None
    if keep:
        weights = repro.weights_sha256(state.model)
        model_id = tracker.log_epoch_model(state.model, network, epoch, weights)
    tracker.log_epoch(state.history[-1], epoch, path, model_id)
    if state.step.failure is not None:  # the capture failed in this epoch or before: the run says so
        tracker.set_tags({names.CUDA_GRAPH: f"failed: {state.step.failure}"[:500]})
    if keep:
        tracker.keep_best(keep, BestEpoch.of(cfg).ranked(state.history))
    log.info("epoch %d/%d  %s", epoch, cfg.trainer.epochs, fmt(state.history[-1]))


def test_and_log_model(
    cfg: DictConfig, ctx: JobContext, tracker: Tracker, state: TrainingState, classes: tuple, network: Network
) -> Tuple[Dict[str, float], str]:
    """Score the test split once, after the last epoch, class by class with figures; fingerprint the
    weights; log the model; then where the run's time went. Returns the metrics and the weights'
    fingerprint."""
    clock = state.clock
    with clock.phase("test"):
        forward = distributed.unwrap(state.forward)  # rank 0 alone: no DDP collectives
        report = score(forward, state.splits["test"], classes, cfg.data.eval_batch_size, state.precision)
    final = {
        names.TEST_LOSS: report.loss,
        names.TEST_ACC: report.accuracy,
        names.TRAIN_TIME: train_time_s(state.history),
    }
    tracker.log_metrics({**final, **report.class_metrics()}, step=state.epoch)
    with clock.phase("figures"):
        tracker.log_report(report.as_dict(), run_figures(report, state.history))
    weights = repro.weights_sha256(state.model)
    tracker.set_tags({names.WEIGHTS_SHA256: weights})
    log.info("test  %s", fmt(final))
    state.stops.check()
    with clock.phase("model"):
        if cfg.tracking.log_model:
            register_as = None if ctx.multirun else cfg.tracking.register_as  # a sweep registers only its champion
            tracker.log_model(state.model, network, register_as, cfg.tracking.register_from)
            if cfg.tracking.log_onnx:
                tracker.log_onnx(state.model, state.splits["test"], classes)
    state.stops.check()  # a stop asked for while the model was logged: KILLED, resumable, not ignored
    timing = clock.metrics()
    tracker.log_metrics(timing, step=state.epoch)
    log.info("time  %s", fmt(timing))
    return {**final, **timing}, weights


def train_time_s(history: List[Dict[str, float]]) -> float:
    """The seconds of every epoch with its validation, over all of a resumed run's processes."""
    return sum(h[names.EPOCH_TIME] + h.get(names.VAL_TIME, 0.0) for h in history)


def fmt(metrics: Dict[str, float]) -> str:
    """`train_loss 0.1234  lr 1.00e-03  epoch_time_s 3.1`: a line of the console log."""

    def one(key: str, value: float) -> str:
        if key == names.LR:
            return f"lr {value:.2e}"
        if key.endswith("_s"):
            return f"{key} {value:.1f}"
        return f"{key} {value:.4f}"

    return "  ".join(one(k, v) for k, v in metrics.items())
