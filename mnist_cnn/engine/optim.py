"""The optimizer and learning-rate schedule named by `optimizer.name` and `scheduler.name`.

Each option's keys come from its own schema (config.schema), so every key read here exists.
"""

from typing import Iterable, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from mnist_cnn.errors import ConfigError


def build_optimizer(cfg: DictConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        if cfg.name == "sgd":
            return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
        return cls(params, betas=tuple(cfg.betas), **common)
    except ValueError as e:  # torch's own checks, e.g. nesterov without momentum
        raise ConfigError(f"optimizer ({cfg.name}): {e}; fix the optimizer.* values.") from e


def build_scheduler(
    cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """A scheduler stepped after every optimizer step (step_size is counted in epochs), or None."""
    total = steps_per_epoch * epochs
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size * steps_per_epoch, cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, cfg.min_lr)
    if cfg.name == "onecycle":
        max_lr = cfg.max_lr if cfg.max_lr is not None else optimizer.defaults["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, total_steps=total, pct_start=cfg.pct_start)
    return None
