"""One epoch of training and one pass of evaluation, on the device and precision the run resolved.
On a GPU each full batch's step is one replay of a captured CUDA graph where it can be (engine.graphs).

The step loop never reads a value back to the host: loss and accuracy are summed on the device and
read once per epoch. Under trainer.strategy=ddp each rank trains on its share of every batch and the
sums are added up across ranks (engine.distributed).
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mnist_cnn import names
from mnist_cnn.data.splits import Split, batches
from mnist_cnn.engine import distributed, graphs
from mnist_cnn.engine.distributed import SINGLE, World
from mnist_cnn.engine.precision import autocast
from mnist_cnn.engine.state import TrainingState
from mnist_cnn.errors import ConfigError, DivergedError


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda when a GPU is visible; asking for cuda without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=auto or cpu.")
    return torch.device(name)


@dataclass(frozen=True)
class StepSettings:
    """What train_epoch reads besides the state, resolved once from the config (runner.setup)."""

    batch_size: int  # the global batch: under DDP each rank takes its share
    drop_last: bool
    limit_batches: Optional[int]  # at most this many steps an epoch
    augment: Any  # data.augment: the random warps of each training image (data.augment)
    label_smoothing: float  # the training loss only
    cuda_graph: bool  # each full batch's step one replay of a captured CUDA graph (engine.graphs.captures)
    progress: bool  # a progress bar on a terminal


def train_epoch(state: TrainingState, settings: StepSettings, epoch: int, world: World = SINGLE) -> Dict[str, float]:
    """One pass over the shuffled training split (under DDP, this rank's share of each batch); stops
    before a step once a stop was requested. Returns the whole epoch's train_loss and train_acc."""
    state.forward.train()
    if state.step is None:  # one step a run: a captured one keeps its stream and graph (engine.graphs)
        forward = _training_forward(state.forward, state.device, state.precision, settings.label_smoothing)
        state.step = graphs.training_step(forward, state.optimizer, state.scheduler, settings.cuda_graph, state.device)
    step = state.step
    step.new_epoch()
    s = settings
    loader = batches(
        state.splits["train"],
        s.batch_size,
        state.generator,
        s.drop_last,
        s.limit_batches,
        (world.rank, world.size),
        s.augment,
    )
    quiet = None if s.progress and world.main else True  # None: tqdm shows the bar only on a terminal
    stop = distributed.StopVote(world, state.stops)
    seen = 0
    for images, labels in tqdm(loader, total=state.steps_per_epoch, desc=f"epoch {epoch}", leave=False, disable=quiet):
        stop.check()
        step(images, labels)
        if state.scheduler is not None:
            state.scheduler.step()
        seen += len(labels)
    stop.close()
    # every rank gets the global epoch's
    loss_sum, correct, seen = distributed.all_sum(world, step.loss_sum, step.correct, seen)
    return {names.TRAIN_LOSS: loss_sum / seen, names.TRAIN_ACC: correct / seen}


def _training_forward(model: nn.Module, device: torch.device, precision: str, smoothing: float) -> graphs.Forward:
    def forward(images, labels):  # the logits and the training loss, under the run's precision
        with autocast(device, precision):
            logits = model(images)
            return logits, F.cross_entropy(logits, labels, label_smoothing=smoothing)

    return forward


def check_divergence(metrics: Dict[str, float], num_classes: int, epoch: int) -> None:
    """A loss that is not finite, or far above chance while accuracy stays at chance, has diverged.

    Adam at lr=1 or 100 on MNIST keeps a finite loss (hundreds to millions) and ends at 10% accuracy;
    a working run of any length is below 2x the chance loss or above 2x the chance accuracy.
    """
    loss, acc = metrics[names.TRAIN_LOSS], metrics[names.TRAIN_ACC]
    chance_loss, chance_acc = math.log(num_classes), 1 / num_classes
    if math.isfinite(loss) and not (loss > 2 * chance_loss and acc < 2 * chance_acc):
        return
    raise DivergedError(
        f"train_loss became {loss:.4g} in epoch {epoch} (chance level {chance_loss:.2f}) with train_acc "
        f"{acc:.3f} (chance {chance_acc:.2f}): training diverged. Lower optimizer.lr (or scheduler.max_lr), "
        "or add batchnorm to the model."
    )


@torch.inference_mode()
def predictions(
    model: nn.Module, split: Split, batch_size: int, precision: str = "fp32"
) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """(fp32 logits, labels) for a whole split, in large batches, without gradients."""
    model.eval()
    for images, labels in batches(split, batch_size):
        with autocast(images.device, precision):
            logits = model(images)
        yield logits.float(), labels


def evaluate(model: nn.Module, split: Split, batch_size: int, precision: str = "fp32") -> Dict[str, float]:
    """Mean cross-entropy and accuracy over a whole split."""
    loss_sum = torch.zeros((), device=split.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    for logits, labels in predictions(model, split, batch_size, precision):
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}
