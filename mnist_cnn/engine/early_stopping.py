"""Which epoch of a run is its best (`BestEpoch`), and early stopping (trainer.early_stopping): a
run ends once the first of objective.metrics has gone `patience` epochs without improving by more
than `min_delta`.

One rule says which epoch is best, for early stopping and trainer.restore_best, for the epochs
trainer.keep_best keeps and for the one tracking.register_from=best registers: an epoch that
improved on the best before it by `min_delta` or less is not better (without early stopping
min_delta is 0: a tie goes to the earlier epoch). Every decision is read from the epochs' metrics
(state.history), which a checkpoint carries: a resumed run stops at the same epoch as the
uninterrupted one, and keeps the same best weights.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from omegaconf import DictConfig

from mnist_cnn.config.schema import first_objective

History = List[Dict[str, float]]


@dataclass(frozen=True)
class BestEpoch:
    metric: str
    direction: str  # maximize or minimize
    min_delta: float

    @classmethod
    def of(cls, cfg: DictConfig) -> "BestEpoch":
        """The run's rule: its first objective, and early stopping's min_delta (0 without it)."""
        return cls(*first_objective(cfg.objective), float(cfg.trainer.early_stopping.min_delta))

    def best_epoch(self, history: History, among: Optional[Sequence[int]] = None) -> int:
        """The epoch (from 1) of `among` (default: all) that no later one improved on by more than
        `min_delta`."""
        epochs = list(among or range(1, len(history) + 1))
        best = epochs[0]
        for epoch in epochs[1:]:
            gain = history[epoch - 1][self.metric] - history[best - 1][self.metric]
            if (gain if self.direction == "maximize" else -gain) > self.min_delta:
                best = epoch
        return best

    def ranked(self, history: History) -> List[int]:
        """Every epoch, best first: the best epoch, then the best of the others, and so on."""
        left, order = list(range(1, len(history) + 1)), []
        while left:
            order.append(self.best_epoch(history, left))
            left.remove(order[-1])
        return order


@dataclass(frozen=True)
class EarlyStopping(BestEpoch):
    patience: int

    @classmethod
    def of(cls, cfg: DictConfig) -> Optional["EarlyStopping"]:
        """The run's early stopping, or None (trainer.early_stopping.patience is null)."""
        patience = cfg.trainer.early_stopping.patience
        if patience is None:
            return None
        rule = BestEpoch.of(cfg)
        return cls(rule.metric, rule.direction, rule.min_delta, int(patience))

    def stops(self, history: History) -> bool:
        """Whether the run ends now: `patience` epochs have passed since the best one."""
        return len(history) - self.best_epoch(history) >= self.patience
