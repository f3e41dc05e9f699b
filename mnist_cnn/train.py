"""The training story: check everything, then train, evaluate and record one run.

`run(cfg, output_dir)` is what `mnist-cnn-train` calls after Hydra has composed the config. All
checks (model shapes, data files, tracking store) happen before an MLflow run is opened, so a bad
config never leaves a run behind.
"""

import logging
import math
import random
import time
from pathlib import Path
from typing import Dict, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from mnist_cnn import builder, data
from mnist_cnn.datasets import dataset_info
from mnist_cnn.errors import ConfigError, DivergedError
from mnist_cnn.spec import IN_SHAPE, check_config
from mnist_cnn.checkpoint import save_checkpoint

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda when a GPU is visible; asking for cuda without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(cfg: DictConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
    try:
        if cfg.name == "sgd":
            return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return cls(params, betas=tuple(cfg.betas), **common)
    except ValueError as e:  # torch's own checks: negative lr, nesterov without momentum, ...
        raise ConfigError(f"optimizer ({cfg.name}): {e}; fix the optimizer.* values.") from e


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
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


def train_epoch(model, split, cfg: DictConfig, optimizer, scheduler, generator, epoch: int) -> Dict[str, float]:
    """One pass over the shuffled training split; loss and accuracy are summed on the device."""
    model.train()
    loss_sum = torch.zeros((), device=split.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    seen = 0
    loader = data.batches(split, cfg.data.batch_size, generator, cfg.data.drop_last, cfg.trainer.limit_batches)
    total = data.num_batches(len(split), cfg.data.batch_size, cfg.data.drop_last, cfg.trainer.limit_batches)
    quiet = None if cfg.trainer.progress else True  # None: tqdm shows the bar only on a terminal
    for images, labels in tqdm(loader, total=total, desc=f"epoch {epoch}", leave=False, disable=quiet):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss):
        raise DivergedError(
            f"train_loss became {mean_loss} in epoch {epoch}: training diverged. Lower optimizer.lr "
            "(or scheduler.max_lr), or add batchnorm to the model."
        )
    return {"train_loss": mean_loss, "train_acc": correct.item() / seen}


@torch.inference_mode()
def evaluate(model: nn.Module, split: data.Split, batch_size: int) -> Dict[str, float]:
    """Mean cross-entropy and accuracy over a whole split, in large batches."""
    model.eval()
    loss_sum = torch.zeros((), device=split.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    for images, labels in data.batches(split, batch_size):
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    return {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}


def prepare(cfg: DictConfig):
    """Every check that can fail on a bad config or bad data, done before tracking starts."""
    plan = check_config(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    info = dataset_info(cfg.data.name)
    model = builder.build_model(plan, *((info.mean, info.std) if cfg.data.normalize else ()))
    log.info("model %s on %s:\n%s", cfg.model.name, device, builder.summary(model, plan, IN_SHAPE))
    load = dict(root=cfg.data.root, name=cfg.data.name, download=cfg.data.download, verify=cfg.data.verify_checksums)
    train, val = data.split_validation(data.load_split(split="train", **load), cfg.data.val_size, cfg.seed)
    test = data.load_split(split="test", **load)
    log.info("data %s: %d train, %d val, %d test images", cfg.data.name, len(train), len(val or []), len(test))
    splits = {"train": train.to(device), "val": val.to(device) if val else None, "test": test.to(device)}
    return model.to(device), splits, device


def run(cfg: DictConfig, output_dir: Path) -> Dict[str, float]:
    """Train `cfg` to the end; returns the final metrics (also logged to MLflow)."""
    model, splits, device = prepare(cfg)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    steps = data.num_batches(len(splits["train"]), cfg.data.batch_size, cfg.data.drop_last, cfg.trainer.limit_batches)
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps, cfg.trainer.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)  # epoch permutations, apart from the global RNG
    n_params = builder.count_params(model)
    from mnist_cnn import tracking  # MLflow takes seconds to import: only once every check has passed

    with tracking.tracked_run(cfg, {"n_params": n_params}, {"device": str(device)}) as tracker:
        for epoch in range(1, cfg.trainer.epochs + 1):
            start = time.perf_counter()
            metrics = train_epoch(model, splits["train"], cfg, optimizer, scheduler, generator, epoch)
            seconds = time.perf_counter() - start
            samples = min(len(splits["train"]), steps * cfg.data.batch_size)
            metrics.update(lr=optimizer.param_groups[0]["lr"], epoch_time_s=seconds, samples_per_s=samples / seconds)
            if splits["val"] is not None:
                val = evaluate(model, splits["val"], cfg.data.eval_batch_size)
                metrics.update(val_loss=val["loss"], val_acc=val["acc"])
            tracker.log_metrics(metrics, step=epoch)
            ckpt = save_checkpoint(output_dir / "checkpoints" / "last.pt", model, optimizer, scheduler, epoch)
            tracker.log_artifact(ckpt, "checkpoints")
            log.info("epoch %d/%d  %s", epoch, cfg.trainer.epochs, _fmt(metrics))
        test = evaluate(model, splits["test"], cfg.data.eval_batch_size)
        final = {"test_loss": test["loss"], "test_acc": test["acc"]}
        tracker.log_metrics(final, step=cfg.trainer.epochs)
        log.info("test  %s", _fmt(final))
        if cfg.tracking.log_model:
            tracker.log_model(model, IN_SHAPE, model[-1].out_features)
    return {**metrics, **final}


def _fmt(metrics: Dict[str, float]) -> str:
    def one(key: str, value: float) -> str:
        if key == "lr":
            return f"lr {value:.2e}"
        if key.endswith("_s"):
            return f"{key} {value:.1f}"
        return f"{key} {value:.4f}"

    return "  ".join(one(k, v) for k, v in metrics.items())


if __name__ == "__main__":
    from mnist_cnn.cli import main  # the Hydra entry point, also installed as `mnist-cnn-train`

    main()
