"""Typed schema of every config group (registered in Hydra's ConfigStore by config.tree).

`conf/config.yaml` starts its defaults list with `config_schema` (the `Config` below), so each
group merges into a typed node: an unknown key or a value of the wrong type fails as soon as Hydra
composes the config. Groups with several options (optimizer, scheduler) have one dataclass per
option, stored as `<group>_<option>_schema` (outside the groups, so `--help` offers no schema as an
option) and named first in that option's YAML (Hydra's structured-config pattern), so
`optimizer=adam optimizer.momentum=0.9` is an error: AdamConfig has no momentum. Choices are
enums; numbers carry their valid range in `metadata["range"]`, which `config.checks` enforces
before anything runs. The YAML files repeat these defaults with a comment
on each key; a test keeps the two equal.
"""

import dataclasses
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional, Tuple, Type

from omegaconf import MISSING, DictConfig, OmegaConf

from mnist_cnn.config.paths import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, DEFAULT_TRACKING_URI, TRACKING_URI_ENV
from mnist_cnn.data.datasets import DATASETS
from mnist_cnn.model.layers import KINDS, PARAMS
from mnist_cnn.names import OBJECTIVES


@dataclass(frozen=True)
class Range:
    """The valid values of a number: `low`..`high`, each end open or closed; always finite."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def holds(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return math.isfinite(x) and above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        low, high = _number(self.low), _number(self.high)
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(x: float) -> str:
    """4294967295, not 4.29497e+09; 0.5 as 0.5."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


SEED = Range(0, 2**32 - 1)  # what NumPy's seed takes
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)  # (0, 1)


def ranged(default: Any, valid: Range, **kwargs: Any) -> Any:
    """A dataclass field whose value (or each element of its list) must lie in `valid`."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"range": valid, **kwargs})
    return field(default=default, metadata={"range": valid, **kwargs})


def _choices(name: str, values) -> Type[StrEnum]:
    return StrEnum(name, [(v, v) for v in values], module=__name__)  # module: picklable for sweep workers


Dataset = _choices("Dataset", DATASETS)
LayerType = _choices("LayerType", KINDS)
Device = _choices("Device", ("auto", "cpu", "cuda"))
Precision = _choices("Precision", ("fp32", "bf16"))
Download = _choices("Download", ("auto", "never"))
Direction = _choices("Direction", ("maximize", "minimize"))
Metric = _choices("Metric", OBJECTIVES)  # what a sweep can rank runs by
Pruner = _choices("Pruner", ("none", "median", "hyperband", "successive_halving", "patient"))
RegisterFrom = _choices("RegisterFrom", ("last", "best"))
Strategy = _choices("Strategy", ("single", "ddp"))

# One entry of `model.layers`: `type` plus every key some layer kind takes (model.layers.PARAMS).
# Which keys apply depends on the type; config.checks rejects the others, naming the layer.
LayerSpec = dataclasses.make_dataclass(
    "LayerSpec",
    [("type", LayerType, MISSING)] + [(key, Optional[kind], None) for key, kind in PARAMS.items()],
)
LayerSpec.__module__ = __name__  # picklable for sweep workers


@dataclass
class ModelConfig:
    name: str = MISSING
    layers: List[LayerSpec] = MISSING


@dataclass
class OptimizerConfig:
    """Keys every optimizer takes; `name` says which option's schema applies."""

    name: str = MISSING
    lr: float = ranged(1e-3, POSITIVE)
    weight_decay: float = ranged(0.0, NON_NEGATIVE)


@dataclass
class AdamConfig(OptimizerConfig):
    name: str = "adam"
    betas: List[float] = ranged([0.9, 0.999], FRACTION, length=2)


@dataclass
class AdamWConfig(AdamConfig):
    name: str = "adamw"
    weight_decay: float = ranged(0.01, NON_NEGATIVE)  # decoupled from the gradient


@dataclass
class SGDConfig(OptimizerConfig):
    name: str = "sgd"
    lr: float = ranged(0.05, POSITIVE)
    momentum: float = ranged(0.9, FRACTION)
    nesterov: bool = False  # needs momentum > 0


@dataclass
class SchedulerConfig:
    name: str = MISSING


@dataclass
class NoSchedulerConfig(SchedulerConfig):
    name: str = "none"


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    name: str = "step"
    step_size: int = ranged(5, AT_LEAST_ONE)  # epochs between decays
    gamma: float = ranged(0.1, POSITIVE)


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    name: str = "cosine"
    min_lr: float = ranged(0.0, NON_NEGATIVE)


@dataclass
class OneCycleSchedulerConfig(SchedulerConfig):
    name: str = "onecycle"
    max_lr: Optional[float] = ranged(None, POSITIVE)  # null: optimizer.lr
    pct_start: float = ranged(0.3, OPEN_UNIT)


# The options of each group with several: the ConfigStore entries, the YAML files and
# `typed_config` all follow this table.
OPTIONS: Dict[str, Tuple[type, ...]] = {
    "optimizer": (AdamConfig, AdamWConfig, SGDConfig),
    "scheduler": (NoSchedulerConfig, StepSchedulerConfig, CosineSchedulerConfig, OneCycleSchedulerConfig),
}


@dataclass
class AugmentConfig:
    """Random warps of each training image (data.augment); all 0: none."""

    translate: float = ranged(0.0, Range(0, 0.5))  # largest shift along each axis, as a fraction of the side
    rotate: float = ranged(0.0, Range(0, 180))  # largest rotation either way, in degrees
    scale: float = ranged(0.0, Range(0, 1, high_open=True))  # largest change of size: 0.1 zooms by 0.9 to 1.1


@dataclass
class DataConfig:
    name: Dataset = Dataset.mnist
    root: str = f"${{oc.env:{DATA_ROOT_ENV},{DEFAULT_DATA_ROOT}}}"  # relative: the folder the command started in
    download: Download = Download.auto
    verify_checksums: bool = True
    normalize: bool = True
    batch_size: int = ranged(64, AT_LEAST_ONE)
    eval_batch_size: int = ranged(256, AT_LEAST_ONE)
    val_size: int = ranged(5000, NON_NEGATIVE)
    drop_last: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class EarlyStoppingConfig:
    """Stop a run once the first of objective.metrics has not improved for `patience` epochs."""

    patience: Optional[int] = ranged(None, AT_LEAST_ONE)  # null: never stop early
    min_delta: float = ranged(0.0, NON_NEGATIVE)  # a smaller change than this is no improvement


# trainer.device's default when set (else auto): the CPU test suite pins its runs, subprocesses included, to the CPU
DEVICE_ENV = "MNIST_CNN_DEVICE"


@dataclass
class TrainerConfig:
    epochs: int = ranged(3, AT_LEAST_ONE)
    device: Device = f"${{oc.env:{DEVICE_ENV},auto}}"  # type: ignore[assignment]  # resolves to a Device
    limit_batches: Optional[int] = ranged(None, AT_LEAST_ONE)
    progress: bool = True
    deterministic: Optional[bool] = None  # null: on for cpu, off for cuda
    precision: Optional[Precision] = None  # null: the faster of fp32 and bf16 for this net and device, measured
    channels_last: bool = True
    compile: bool = False
    # training loss only: targets (1 - ls) on the label, ls spread over all classes
    label_smoothing: float = ranged(0.0, FRACTION)
    keep_best: int = ranged(0, NON_NEGATIVE)  # K > 0: keep the K best epochs (by the first objective) as logged models
    strategy: Strategy = Strategy.single  # ddp: data-parallel over the processes torchrun starts (engine.distributed)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    restore_best: bool = True  # with early stopping: test and log the weights of the best epoch, not the last
    cuda_graph: Optional[bool] = (
        None  # each step a replayed CUDA graph; null: on for cuda but not ddp or compile (engine.graphs)
    )


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = f"${{oc.env:{TRACKING_URI_ENV},{DEFAULT_TRACKING_URI}}}"
    experiment: str = "mnist"
    run_name: Optional[str] = None
    log_model: bool = True
    log_onnx: bool = False  # also log the model as ONNX, model.onnx (the export extra)
    register_as: Optional[str] = None  # also register the model as a new version of this registered model
    register_from: RegisterFrom = RegisterFrom.last  # best: the best epoch kept by trainer.keep_best
    system_metrics: bool = False  # MLflow's CPU, memory, disk and network metrics every 10 s
    heartbeat_s: float = ranged(30.0, POSITIVE)  # a RUNNING run silent for 3 heartbeats is STALE


@dataclass
class ObjectiveConfig:
    """What a sweep optimises. Several metrics make an Optuna search multi-objective (a Pareto
    front); the first one alone ranks epochs (pruning, keep_best) and names the best job."""

    metrics: List[Metric] = field(default_factory=lambda: [Metric.val_acc])
    directions: List[Direction] = field(default_factory=lambda: [Direction.maximize])  # one per metric
    pruner: Pruner = Pruner.none  # stop a sweep's hopeless jobs after an epoch (Optuna's pruners)
    prune_warmup_epochs: int = ranged(1, NON_NEGATIVE)  # never prune during a job's first epochs
    prune_min_runs: int = ranged(3, NON_NEGATIVE)  # jobs that must have finished before any pruning
    prune_patience: Optional[int] = ranged(None, AT_LEAST_ONE)  # patient only: N+1 epochs short of the best first


@dataclass
class Config:
    seed: int = ranged(0, SEED)
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    resume: Optional[str] = None  # an MLflow run id, or a checkpoint file: continue from there
    resume_sweep: Optional[str] = None  # a sweep's parent run id: finish that multirun in the same parent


def objectives(objective: DictConfig) -> List[Tuple[str, str]]:
    """Each metric of `objective` with its direction: [("val_acc", "maximize"), ...]."""
    return [(str(m), str(d)) for m, d in zip(objective.metrics, objective.directions)]


def first_objective(objective: DictConfig) -> Tuple[str, str]:
    """The metric and direction that rank a run's epochs and name a sweep's best job: the first."""
    return objectives(objective)[0]


def typed_config(tree: Dict[str, Any]) -> DictConfig:
    """A plain config tree (e.g. a run's config.yaml) back in its typed schema, each group with
    several options typed by its `name`; keys the schema does not know are an error."""
    cfg = OmegaConf.structured(Config)
    for group, options in OPTIONS.items():
        by_name = {option.name: option for option in options}
        name = (tree.get(group) or {}).get("name")
        if name in by_name:
            cfg[group] = OmegaConf.structured(by_name[name])
    return OmegaConf.merge(cfg, tree)
