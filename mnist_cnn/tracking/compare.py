"""What two runs differ in (`mnist-cnn-runs diff`): their configs key by key, their fingerprints,
their final metrics side by side, and the first epoch where their per-epoch histories part.

Each run's config is the `config.yaml` it logged, flattened to dotted keys (`optimizer.lr`,
`model.layers.0.out_channels`); a key that is null or missing in one run and set in the other
differs. Only the store's read API is used.
"""

import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from mlflow import MlflowClient
from mlflow.entities import LifecycleStage, Run

from mnist_cnn import names
from mnist_cnn.config.keys import flatten
from mnist_cnn.tracking.environment import VERSION
from mnist_cnn.tracking.lookup import find_run, run_config
from mnist_cnn.tracking.states import state_of

# The metrics logged each epoch that two runs computing the same things log alike: where histories part.
HISTORY = (*names.EPOCH_METRICS, names.LR)
# Each epoch's timings differ between any two runs, even of one config on one machine: left out.
TIMINGS = (names.EPOCH_TIME, names.VAL_TIME, names.SAMPLES_PER_S)

Pair = Tuple[Any, Any]  # (run A's value, run B's value); None where a run has none
# How the final metrics are grouped, in this order: what the run scored, then where its time went
# (every metric in seconds, and throughput), MLflow's system metrics, then the test split class by class.
METRIC_GROUPS = ("headline", "timings", "system", "per class")
PER_CLASS = re.compile(r"_acc_class_(\d+)$")  # names.class_metric


@dataclass(frozen=True)
class Parting:
    """Where two runs' per-epoch HISTORY metrics first differ."""

    epoch: Optional[int]  # the first epoch whose metrics differ or that one run lacks; None: never
    metrics: List[str]  # the HISTORY metrics that differ there (none where one run has no such epoch)
    epochs: Pair  # how many epochs each run logged

    def describe(self) -> str:
        """Where the histories part, in words, naming what was compared and what was left out."""
        a, b = self.epochs
        if self.epoch is None:
            where = f"histories: the same in all {a} epochs"
        elif self.metrics:
            where = f"histories part at epoch {self.epoch}: {', '.join(self.metrics)} differ"
        else:
            where = f"histories part at epoch {self.epoch}: A logged {a} epochs, B {b}"
        left_out = ", ".join(TIMINGS)
        return f"{where} (compared: {', '.join(HISTORY)}; left out, as they differ between any two runs: {left_out})"


@dataclass(frozen=True)
class RunDiff:
    runs: Tuple[Run, Run]
    config: Dict[str, Pair]  # the dotted config keys that differ
    fingerprints: Dict[str, Pair]  # the fingerprint and version tags that differ
    metrics: Dict[str, Pair]  # every final metric of either run
    histories: Parting

    def as_dict(self) -> Dict[str, Any]:
        """Plain values for JSON: each pair as {"a": ..., "b": ...}."""

        def pairs(found: Dict[str, Pair]) -> Dict[str, Dict[str, Any]]:
            return {key: {"a": a, "b": b} for key, (a, b) in found.items()}

        runs = [{"run_id": r.info.run_id, "name": r.info.run_name, "status": status(r)} for r in self.runs]
        parting = self.histories
        return {
            "runs": {"a": runs[0], "b": runs[1]},
            "config": pairs(self.config),
            "fingerprints": pairs(self.fingerprints),
            "metrics": pairs(self.metrics),
            "histories": {
                "epochs": {"a": parting.epochs[0], "b": parting.epochs[1]},
                "part_at_epoch": parting.epoch,
                "differing": parting.metrics,
                "compared": list(HISTORY),
                "left_out": list(TIMINGS),
            },
        }


def diff_runs(client: MlflowClient, run_a: str, run_b: str) -> RunDiff:
    """Compare runs `run_a` and `run_b`; ModelError (exit 2) for an unknown id or a run without config.yaml."""
    named = {"RUN_A": run_a, "RUN_B": run_b}  # how the messages name each
    runs = tuple(find_run(client, run_id, where) for where, run_id in named.items())
    with tempfile.TemporaryDirectory() as folder:  # each config is read before the next one is downloaded
        configs = [flatten(run_config(client, run_id, folder, where)) for where, run_id in named.items()]
    tags = [{k: v for k, v in r.data.tags.items() if k in names.FINGERPRINTS or k.startswith(VERSION)} for r in runs]
    a, b = runs[0].data.metrics, runs[1].data.metrics
    return RunDiff(
        runs=runs,
        config=differing(*configs),
        fingerprints=differing(*tags),
        metrics={key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys(), key=metric_order)},
        histories=parting(history(client, run_a), history(client, run_b)),
    )


def metric_group(key: str) -> str:
    """Which of METRIC_GROUPS a final metric belongs to."""
    if PER_CLASS.search(key):
        return "per class"
    if key.startswith("system/"):
        return "system"
    return "timings" if key.endswith("_s") else "headline"


def metric_order(key: str) -> tuple:
    """Group by group (METRIC_GROUPS); the headline metrics in the order runs log them (HISTORY,
    then the test split's), the classes by number, the rest by name."""
    group = METRIC_GROUPS.index(metric_group(key))
    known = (*HISTORY, names.TEST_LOSS, names.TEST_ACC)
    per_class = PER_CLASS.search(key)
    return group, known.index(key) if key in known else len(known), int(per_class[1]) if per_class else 0, key


def status(run: Run) -> str:
    """How a run ended (tracking.states), or DELETED for a run in MLflow's trash."""
    return "DELETED" if run.info.lifecycle_stage == LifecycleStage.DELETED else state_of(run).value


def differing(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Pair]:
    """The keys whose values differ, a key missing from one side counting as None, in key order."""
    return {key: (a.get(key), b.get(key)) for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def history(client: MlflowClient, run_id: str) -> Dict[int, Dict[str, float]]:
    """Run `run_id`'s HISTORY metrics, epoch by epoch: {epoch: {metric: value}}."""
    epochs: Dict[int, Dict[str, float]] = defaultdict(dict)
    for key in HISTORY:
        for metric in client.get_metric_history(run_id, key):
            epochs[metric.step][key] = metric.value
    return dict(epochs)


def parting(a: Dict[int, Dict[str, float]], b: Dict[int, Dict[str, float]]) -> Parting:
    """The first epoch at which two histories differ: a metric's value (exactly: the same seed on the
    same machine repeats them bit for bit), a metric only one logs, or an epoch only one has."""
    lengths = (len(a), len(b))
    for epoch in sorted(a.keys() | b.keys()):
        if epoch not in a or epoch not in b:
            return Parting(epoch, [], lengths)
        metrics = differing(a[epoch], b[epoch])
        if metrics:
            return Parting(epoch, [key for key in HISTORY if key in metrics], lengths)
    return Parting(None, [], lengths)
