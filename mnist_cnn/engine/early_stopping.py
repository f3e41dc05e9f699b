"""Early stopping (trainer.early_stopping): a run ends once the first of objective.metrics has gone
`patience` epochs without improving by more than `min_delta`.

Every decision is read from the epochs' metrics (state.history), which a checkpoint carries: a
resumed run stops at the same epoch as the uninterrupted one, and keeps the same best weights.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

from omegaconf import DictConfig

from mnist_cnn.config.schema import first_objective


@dataclass(frozen=True)
class EarlyStopping:
    metric: str
    direction: str  # maximize or minimize
    min_delta: float
    patience: int

    @classmethod
    def of(cls, cfg: DictConfig) -> Optional["EarlyStopping"]:
        """The run's early stopping, or None (trainer.early_stopping.patience is null)."""
        options = cfg.trainer.early_stopping
        if options.patience is None:
            return None
        return cls(*first_objective(cfg.objective), float(options.min_delta), int(options.patience))

    def best_epoch(self, history: List[Dict[str, float]]) -> int:
        """The epoch (from 1) that no later epoch improved on by more than `min_delta`."""
        best = 1
        for epoch in range(2, len(history) + 1):
            gain = history[epoch - 1][self.metric] - history[best - 1][self.metric]
            if (gain if self.direction == "maximize" else -gain) > self.min_delta:
                best = epoch
        return best

    def stops(self, history: List[Dict[str, float]]) -> bool:
        """Whether the run ends now: `patience` epochs have passed since the best one."""
        return len(history) - self.best_epoch(history) >= self.patience
