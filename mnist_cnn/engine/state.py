"""One run's training state: everything the epochs change, built once, saved and restored whole.

`runner.setup` builds it after every check has passed; the loop trains it one epoch at a time; a
checkpoint is `state.checkpoint()` and a resume is `state.restore(checkpoint)`, which puts the run
back where the uninterrupted run would be, bit for bit: weights, optimizer and scheduler, every RNG,
the epochs so far, the precision the run resolved and the seconds it has spent.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from mnist_cnn.data.splits import Split
from mnist_cnn.engine import repro
from mnist_cnn.engine.graphs import EagerStep
from mnist_cnn.errors import CheckpointError
from mnist_cnn.interrupts import Stops
from mnist_cnn.timing import Stopwatch


@dataclass
class TrainingState:
    model: nn.Module  # the weights: what checkpoints save and the run logs
    forward: nn.Module  # what the steps call: `model`, compiled and/or DDP-wrapped, sharing its weights
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]
    generator: torch.Generator  # each epoch's permutation and warps, apart from the global RNG (alike on every rank)
    splits: Dict[str, Optional[Split]]  # train, val (None without a validation split), test: on the device
    steps_per_epoch: int  # under DDP, every rank takes each step
    precision: str  # fp32 or bf16, resolved (engine.precision)
    clock: Stopwatch  # the seconds of each phase, over all of a resumed run's processes
    stops: Stops  # the job's stop requests (Ctrl-C, SIGTERM): checked before each step
    history: List[Dict[str, float]] = field(default_factory=list)  # each completed epoch's metrics
    best: Optional[Dict[str, Any]] = None  # early stopping: the best epoch so far, {"epoch", "model"} (its weights)
    step: Optional[EagerStep] = None  # made by the first epoch, kept for the run (engine.graphs); not saved

    @property
    def device(self) -> torch.device:
        return self.splits["train"].labels.device

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return len(self.history)

    def checkpoint(self) -> Dict[str, Any]:
        """What continues the run exactly after this epoch (checkpoint.REQUIRED and more), as tensors
        and plain values."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "global_step": self.epoch * self.steps_per_epoch,
            "rng": repro.rng_state(self.generator, self.device),
            "history": self.history,
            "precision": self.precision,
            "timing": self.clock.state(),
            "best": self.best,
        }

    def restore(self, checkpoint: Dict[str, Any]) -> None:
        """Load a checkpoint into the freshly built state (its model, optimizer and scheduler built
        from the same config). The clock and precision were taken from it when the state was built."""
        if len(checkpoint.get("history", [])) != checkpoint["epoch"]:
            raise CheckpointError(
                f"the checkpoint of epoch {checkpoint['epoch']} lacks the metrics of its epochs; resume from one "
                "mnist_cnn wrote."
            )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        repro.restore_rng_state(checkpoint["rng"], self.generator, self.device)
        self.history = list(checkpoint["history"])
        self.best = checkpoint.get("best")

    def keep_if_best(self, best_epoch: int) -> None:
        """Copy the weights if the epoch just completed is the best so far (early stopping restores
        them at the end); an earlier best keeps the copy made then."""
        if best_epoch == self.epoch:
            weights = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
            self.best = {"epoch": best_epoch, "model": weights}

    def restore_best(self) -> int:
        """Put the kept best epoch's weights back into the model; returns that epoch."""
        self.model.load_state_dict(self.best["model"])
        return self.best["epoch"]
