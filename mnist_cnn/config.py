"""Typed schema of every config group, registered in Hydra's ConfigStore.

The YAML files under `conf/` fill these dataclasses: `conf/config.yaml` starts its defaults list
with `config_schema`, so every group merges into a typed node and OmegaConf rejects an unknown key
or a value of the wrong type as soon as Hydra composes the config, before anything runs.
"""

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class LayerSpec:
    """One entry of `model.layers`. Which keys apply depends on `type` (see builder.LAYER_KEYS)."""

    type: str = MISSING  # conv | relu | maxpool | avgpool | batchnorm | dropout | flatten | linear | block
    out_channels: Optional[int] = None  # conv, block
    kernel_size: Optional[int] = None  # conv, block, maxpool, avgpool
    stride: Optional[int] = None  # conv, block (default 1); pools (default kernel_size)
    padding: Optional[int] = None  # conv, block (default 0)
    out_features: Optional[int] = None  # linear
    p: Optional[float] = None  # dropout probability (default 0.5)
    init: Optional[str] = None  # conv, linear, block: default | xavier_uniform | kaiming_normal
    batchnorm: Optional[bool] = None  # block: conv -> batchnorm -> relu (default false)
    pool: Optional[str] = None  # block: max | avg | none (default max)
    pool_size: Optional[int] = None  # block: pooling kernel and stride (default 2)


@dataclass
class ModelConfig:
    name: str = MISSING
    layers: List[LayerSpec] = MISSING


@dataclass
class OptimizerConfig:
    name: str = MISSING  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw


@dataclass
class SchedulerConfig:
    name: str = "none"  # none | step | cosine | onecycle
    step_size: int = 5  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr: float = 0.0  # cosine: final learning rate
    max_lr: Optional[float] = None  # onecycle: peak learning rate (default: optimizer.lr)
    pct_start: float = 0.3  # onecycle: fraction of steps spent warming up


@dataclass
class DataConfig:
    name: str = "mnist"  # mnist | fashion_mnist | kmnist
    root: str = MISSING  # folder holding NAME/raw/*.gz, as torchvision lays it out
    download: bool = False  # fetch missing files with torchvision (needs internet)
    verify_checksums: bool = True  # compare decompressed files with the known SHA-256
    normalize: bool = True  # subtract the dataset's mean, divide by its std (inside the model)
    batch_size: int = 64
    eval_batch_size: int = 1000
    val_size: int = 5000  # training images held out for validation (0: none)
    drop_last: bool = False  # drop the last incomplete training batch of each epoch


@dataclass
class TrainerConfig:
    epochs: int = 5
    device: str = "auto"  # auto | cpu | cuda
    limit_batches: Optional[int] = None  # stop each epoch after this many batches (smoke runs)
    progress: bool = True  # progress bar per epoch (shown only on a terminal)
    deterministic: Optional[bool] = None  # deterministic kernels; null: on for cpu, off for cuda
    precision: Optional[str] = None  # "32" | "bf16" (autocast); null: bf16 where the hardware has it
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU and GPU
    compile: bool = False  # torch.compile the model (slower than eager on small CPU models)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "mnist"
    run_name: Optional[str] = None
    log_model: bool = True  # log the final model with mlflow.pytorch.log_model


@dataclass
class ObjectiveConfig:
    metric: str = "val_acc"  # the metric a run returns to a sweeper (Optuna) and a sweep ranks by
    direction: str = "maximize"  # maximize | minimize


@dataclass
class Config:
    seed: int = 0
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    resume: Optional[str] = None  # an MLflow run id: continue that run from its last checkpoint


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` names first in its defaults list."""
    ConfigStore.instance().store(name="config_schema", node=Config)
