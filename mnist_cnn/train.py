"""The training story: check everything, then train, evaluate and record one run.

`run(cfg, output_dir)` is what `mnist-cnn-train` calls after Hydra has composed the config. All
checks (model shapes, data files, tracking store) happen before an MLflow run is opened, so a bad
config never leaves a run behind. With `resume=RUN_ID` it continues that run from its last
checkpoint, exactly where the uninterrupted run would have been.
"""

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from mnist_cnn import builder, data, repro
from mnist_cnn.checkpoint import save_checkpoint
from mnist_cnn.datasets import dataset_info
from mnist_cnn.errors import ConfigError, DivergedError
from mnist_cnn.spec import IN_SHAPE, check_config

log = logging.getLogger(__name__)


class Stop:
    """Set by Ctrl-C or SIGTERM (see request_stop); the step loop then stops before its next step,
    so an epoch either completes with its checkpoint and metrics or leaves no trace."""

    requested = False


def request_stop(signum: int, frame: Any) -> None:
    if Stop.requested:  # a second signal: the user insists, stop right here
        raise KeyboardInterrupt(f"signal {signum}")
    Stop.requested = True


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda when a GPU is visible; asking for cuda without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=auto or cpu.")
    return torch.device(name)


def resolve_precision(name: Optional[str], device: torch.device) -> str:
    """`null` picks bf16 where it is fast (GPUs that support it, CPUs with AMX or AVX512-BF16), else 32.

    On CPUs without those (AVX2 only) bf16 autocast runs several times slower than fp32.
    """
    if name is not None:
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "32"
    fast_bf16 = getattr(torch.cpu, "_is_amx_tile_supported", bool)() or getattr(torch.cpu, "_is_avx512_bf16_supported", bool)()
    return "bf16" if fast_bf16 else "32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forward pass and loss; weights, gradients and metric sums stay fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


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
        if Stop.requested:
            raise KeyboardInterrupt(f"stopped during epoch {epoch}")
        with autocast(images.device, cfg.trainer.precision):
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().float() * len(labels)
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
def evaluate(model: nn.Module, split: data.Split, batch_size: int, precision: str = "32") -> Dict[str, float]:
    """Mean cross-entropy and accuracy over a whole split, in large batches."""
    model.eval()
    loss_sum = torch.zeros((), device=split.labels.device)
    correct = torch.zeros((), dtype=torch.long, device=split.labels.device)
    for images, labels in data.batches(split, batch_size):
        with autocast(images.device, precision):
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").float()
        correct += (logits.argmax(1) == labels).sum()
    return {"loss": loss_sum.item() / len(split), "acc": correct.item() / len(split)}


def prepare(cfg: DictConfig):
    """Every check that can fail on a bad config or bad data, done before tracking starts."""
    plan = check_config(cfg)
    repro.seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    deterministic = cfg.trainer.deterministic if cfg.trainer.deterministic is not None else device.type == "cpu"
    repro.set_deterministic(deterministic)
    cfg.trainer.precision = resolve_precision(cfg.trainer.precision, device)  # logged as resolved
    info = dataset_info(cfg.data.name)
    model = builder.build_model(plan, *((info.mean, info.std) if cfg.data.normalize else ()))
    log.info("model %s on %s:\n%s", cfg.model.name, device, builder.summary(model, plan, IN_SHAPE))
    load = dict(root=cfg.data.root, name=cfg.data.name, download=cfg.data.download, verify=cfg.data.verify_checksums)
    full_train, test = data.load_split(split="train", **load), data.load_split(split="test", **load)
    train, val = data.split_validation(full_train, cfg.data.val_size, cfg.seed)
    log.info("data %s: %d train, %d val, %d test images", cfg.data.name, len(train), len(val or []), len(test))
    splits = {"train": train.to(device), "val": val.to(device) if val else None, "test": test.to(device)}
    tags = {
        "device": str(device),
        "deterministic": str(deterministic),
        "seed": str(cfg.seed),
        "data_sha256": hashlib.sha256((full_train.sha256 + test.sha256).encode()).hexdigest(),
        "config_sha256": repro.config_sha256(cfg),
    }
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device), splits, tags


def run(cfg: DictConfig, output_dir: Path) -> Dict[str, float]:
    """Train `cfg` (or continue run `cfg.resume`) to the end; returns the final metrics (also logged)."""
    Stop.requested = False
    checkpoint: Optional[Dict[str, Any]] = None
    if cfg.resume:
        from mnist_cnn import tracking

        cfg, checkpoint = tracking.resume_point(cfg)
    model, splits, tags = prepare(cfg)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    steps = data.num_batches(len(splits["train"]), cfg.data.batch_size, cfg.data.drop_last, cfg.trainer.limit_batches)
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps, cfg.trainer.epochs)
    generator = torch.Generator().manual_seed(cfg.seed)  # epoch permutations, apart from the global RNG
    first_epoch = 1
    if checkpoint is not None:
        first_epoch = restore(checkpoint, model, optimizer, scheduler, generator) + 1
        tags["resumed_at_epoch"] = str(first_epoch)
    forward = torch.compile(model) if cfg.trainer.compile else model  # shares weights with `model`
    precision = cfg.trainer.precision
    from mnist_cnn import tracking  # MLflow takes seconds to import: only once every check has passed

    metrics: Dict[str, float] = {}
    with tracking.tracked_run(cfg, {"n_params": builder.count_params(model)}, tags) as tracker:
        loop_start = time.perf_counter()
        for epoch in range(first_epoch, cfg.trainer.epochs + 1):
            start = time.perf_counter()
            metrics = train_epoch(forward, splits["train"], cfg, optimizer, scheduler, generator, epoch)
            seconds = time.perf_counter() - start
            samples = min(len(splits["train"]), steps * cfg.data.batch_size)
            metrics.update(lr=optimizer.param_groups[0]["lr"], epoch_time_s=seconds, samples_per_s=samples / seconds)
            if splits["val"] is not None:
                val = evaluate(forward, splits["val"], cfg.data.eval_batch_size, precision)
                metrics.update(val_loss=val["loss"], val_acc=val["acc"])
            rng = repro.rng_state(generator)
            ckpt = save_checkpoint(output_dir / "checkpoints" / "last.pt", model, optimizer, scheduler, epoch, epoch * steps, rng)
            tracker.log_artifact(ckpt, "checkpoints")
            tracker.log_metrics(metrics, step=epoch)
            log.info("epoch %d/%d  %s", epoch, cfg.trainer.epochs, _fmt(metrics))
        train_time = time.perf_counter() - loop_start  # epochs with their validation, checkpoints and logging
        test = evaluate(forward, splits["test"], cfg.data.eval_batch_size, precision)
        final = {"test_loss": test["loss"], "test_acc": test["acc"], "train_time_s": train_time}
        tracker.log_metrics(final, step=cfg.trainer.epochs)
        tracker.set_tags({"weights_sha256": repro.weights_sha256(model)})
        log.info("test  %s", _fmt(final))
        if cfg.tracking.log_model:
            tracker.log_model(model, IN_SHAPE, model[-1].out_features)
    return {**metrics, **final}


def restore(checkpoint: Dict[str, Any], model, optimizer, scheduler, generator: torch.Generator) -> int:
    """Load a checkpoint's states into the freshly built objects; returns the epoch it completed."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    repro.restore_rng_state(checkpoint["rng"], generator)
    log.info("resuming after epoch %d (step %d)", checkpoint["epoch"], checkpoint["global_step"])
    return checkpoint["epoch"]


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
