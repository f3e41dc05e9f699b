"""How a run ended, as its job hands it back to the sweeper that launched it (no torch here: the
command line returns one for a job that failed before the runner was imported)."""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence


@dataclass(frozen=True)
class Outcome:
    """A run's final metrics (empty when it failed), its MLflow run (None when untracked), the
    epoch a pruner stopped it after (None when it was not pruned), the fingerprint of the weights
    it tested (None when it tested none), and whether Ctrl-C or SIGTERM stopped it (a job in a
    pool's worker, joblib's, hands its stop back instead of raising it: see cli.train.Command.job)."""

    metrics: Dict[str, float]
    run_id: Optional[str] = None
    pruned_at: Optional[int] = None
    weights_sha256: Optional[str] = None
    stopped: bool = False

    def values(self, metrics: Sequence[str]) -> Optional[List[float]]:
        """The values of `metrics`, or None when one is missing or not finite."""
        values = [self.metrics.get(m, math.nan) for m in metrics]
        return values if all(math.isfinite(v) for v in values) else None
