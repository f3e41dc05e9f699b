"""Every check that needs neither data nor torch, run on the composed config before anything else.

Hydra and OmegaConf already reject unknown keys and wrong types while composing; this adds what
they let through (keys added with `+`, an option's `name` changed by hand), the valid range of
every number (declared next to each field in config.schema), cross-key rules, and the layer plan.
Each error names the key and how to fix it.
"""

import dataclasses
import difflib
import os
import posixpath
import shlex
from typing import Iterator, List, Optional, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationValidationError

from mnist_cnn.config.job import JobContext
from mnist_cnn.config.keys import override_key
from mnist_cnn.config.schema import DEVICE_ENV, OPTIONS, first_objective
from mnist_cnn.data.datasets import IMAGE_SHAPE, dataset_info
from mnist_cnn.errors import ConfigError
from mnist_cnn.model import onnx_file
from mnist_cnn.model.network import Network
from mnist_cnn.names import EPOCH_METRICS


def check_config(cfg: DictConfig, ctx: Optional[JobContext] = None) -> Network:
    """Raise ConfigError for the first thing wrong with `cfg`, the config of job `ctx` (None: a job
    alone); returns the network it trains (its model's layers, for its dataset's images and classes,
    normalised as it says)."""
    _check_device_env(cfg)
    _check_missing(cfg, ctx or JobContext())
    for path, node in _typed_nodes(cfg):
        _check_keys(path, node)
        _check_ranges(path, node)
    for group, options in OPTIONS.items():
        expected = OmegaConf.get_type(cfg[group]).name
        if cfg[group].name != expected:
            raise ConfigError(
                f"{group}.name is {cfg[group].name!r} but the {group} keys are those of {expected!r}; "
                f"choose the option with {group}={cfg[group].name} instead of {group}.name "
                f"(options: {', '.join(o.name for o in options)})."
            )
    _check_objective(cfg.objective, cfg.data.val_size)
    if cfg.tracking.register_as and not cfg.tracking.log_model:
        raise ConfigError("tracking.register_as needs the model logged; drop tracking.log_model=false.")
    if cfg.tracking.log_onnx and not cfg.tracking.log_model:
        raise ConfigError("tracking.log_onnx logs the model as ONNX too; drop tracking.log_model=false.")
    if cfg.tracking.log_onnx:  # known now, not after the epochs
        onnx_file.require("tracking.log_onnx=true")
    if cfg.optimizer.name == "sgd" and cfg.optimizer.nesterov and cfg.optimizer.momentum == 0:
        raise ConfigError("optimizer.nesterov=true needs optimizer.momentum > 0.")
    _check_names(cfg)
    _check_epoch_ranking(cfg)
    _check_ddp(cfg, ctx or JobContext())
    _check_cuda_graph(cfg)
    info = dataset_info(cfg.data.name)
    layers = OmegaConf.to_container(cfg.model.layers, resolve=True, enum_to_str=True)
    network = Network.of(layers, IMAGE_SHAPE, len(info.classes), *((info.mean, info.std) if cfg.data.normalize else ()))
    network.plan()  # its layers fit the images and the classes
    return network


def _check_missing(cfg: DictConfig, ctx: JobContext) -> None:
    """A key the schema requires (an option's `name`, a model's `layers`) that no file sets: named
    with the file of its group that should set it."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        group, _, key = missing[0].partition(".")
        where = ctx.files.get(group) or f"the {group} file"
        raise ConfigError(f"{missing[0]} has no value: {where} must set `{key}:` (or give {missing[0]}=...).")


def _check_device_env(cfg: DictConfig) -> None:
    """$MNIST_CNN_DEVICE sets trainer.device's default: a value that is none of its options is one
    line naming the variable, not OmegaConf's traceback at the first read."""
    try:
        cfg.trainer.device  # noqa: B018 - reading it resolves the variable
    except InterpolationValidationError:
        raise ConfigError(
            f"{DEVICE_ENV}={os.environ.get(DEVICE_ENV)!r} (trainer.device's default) is not a device: set it to "
            f"auto, cpu or cuda, or unset it."
        ) from None


def _check_names(cfg: DictConfig) -> None:
    """Names that would fail only after training: a registered model's, and an empty resume target
    (an unset shell variable must not start a fresh run)."""
    check_registered_name(cfg.tracking.register_as)
    experiment = cfg.tracking.experiment
    if not experiment.strip() or len(experiment) > EXPERIMENT_NAME_MAX:
        shown = repr(experiment) if len(experiment) <= 40 else f"{experiment[:40]!r}... ({len(experiment)} characters)"
        raise ConfigError(
            f"tracking.experiment={shown}: an MLflow experiment needs a name of 1 to {EXPERIMENT_NAME_MAX} characters "
            "(the longest its SQL stores keep); choose another name."
        )
    for key in ("resume", "resume_sweep"):
        if cfg[key] is not None and not str(cfg[key]).strip():
            raise ConfigError(f"{key}= is empty: give a run id or a checkpoint file, or leave {key} out.")


EXPERIMENT_NAME_MAX = 256  # MLflow's experiments.name column: VARCHAR(256) in its SQL stores (PostgreSQL enforces it)


def check_registered_name(name: Optional[str]) -> None:
    """tracking.register_as must be a name MLflow's model registry takes (its own rule, repeated so
    that it holds before MLflow is imported)."""
    if name is not None and not registrable(name):
        raise ConfigError(
            f"tracking.register_as={name!r}: MLflow's model registry refuses this name (names cannot be blank, "
            "contain '/' or ':', or resolve to another path such as '.' or '..'); choose another name."
        )


def registrable(name: str) -> bool:
    """Whether MLflow's model registry takes `name` (mlflow.utils.validation._validate_model_name)."""
    norm = posixpath.normpath(name)
    return (
        bool(name.strip()) and not {"/", ":"} & set(name) and norm == name and norm != "." and not norm.startswith("..")
    )


def _check_objective(objective: DictConfig, val_size: int) -> None:
    """One direction per metric, each metric once; validation metrics need the split; a pruner
    judges one objective, and only the patient one waits (objective.prune_patience)."""
    metrics, directions = [str(m) for m in objective.metrics], [str(d) for d in objective.directions]
    if not metrics or len(directions) != len(metrics):
        raise ConfigError(
            f"objective.metrics={_listed(metrics)} and objective.directions={_listed(directions)}: give at least one "
            "metric and one direction (maximize or minimize) for each, in the same order."
        )
    if len(set(metrics)) < len(metrics):
        raise ConfigError(f"objective.metrics={_listed(metrics)} names a metric twice; name each once.")
    needs_val = next((m for m in metrics if m.startswith("val_")), None)
    if needs_val and val_size == 0:
        raise ConfigError(f"objective.metrics has {needs_val}, which needs a validation split; set data.val_size > 0.")
    if objective.pruner != "none" and len(metrics) > 1:
        raise ConfigError(
            f"objective.pruner={objective.pruner} judges one objective, but objective.metrics={_listed(metrics)} has "
            f"{len(metrics)} (Optuna prunes single-objective trials only); set objective.pruner=none or one metric."
        )
    if (objective.pruner == "patient") != (objective.prune_patience is not None):
        raise ConfigError(
            "objective.pruner=patient needs objective.prune_patience (how many epochs, plus one, a job must fall "
            "short of its best before the median may prune it)."
            if objective.pruner == "patient"
            else f"objective.prune_patience applies to objective.pruner=patient only, not {objective.pruner}; drop it."
        )


def _listed(values: List[str]) -> str:
    return f"[{','.join(values)}]"


def _check_epoch_ranking(cfg: DictConfig) -> None:
    """Pruning and keep_best rank epochs by the first metric, so it must be one every epoch logs,
    and they need the store."""
    users = [f"objective.pruner={cfg.objective.pruner}"] if cfg.objective.pruner != "none" else []
    users += [f"trainer.keep_best={cfg.trainer.keep_best}"] if cfg.trainer.keep_best else []
    patience = cfg.trainer.early_stopping.patience
    users += [f"trainer.early_stopping.patience={patience}"] if patience is not None else []
    metric, _ = first_objective(cfg.objective)
    if users and metric not in EPOCH_METRICS:
        raise ConfigError(
            f"{' and '.join(users)} rank epochs by the first of objective.metrics, but {metric} is logged only "
            f"once, at the end; choose one of {', '.join(EPOCH_METRICS)}."
        )
    stores = [u for u in users if not u.startswith("trainer.early_stopping")]
    if stores and not cfg.tracking.enabled:
        raise ConfigError(f"{' and '.join(stores)} work through the MLflow store; drop tracking.enabled=false.")
    if patience is None and cfg.trainer.early_stopping.min_delta:
        raise ConfigError(
            "trainer.early_stopping.min_delta applies only with trainer.early_stopping.patience; set the patience "
            "(epochs without improvement before the run stops) or drop min_delta."
        )
    if cfg.tracking.register_from == "best" and not cfg.trainer.keep_best:
        raise ConfigError("tracking.register_from=best needs the best epochs kept: set trainer.keep_best=1 or more.")
    if cfg.resume and cfg.resume_sweep:
        raise ConfigError("resume= continues one run and resume_sweep= a whole sweep; give only one of them.")


def _check_ddp(cfg: DictConfig, ctx: JobContext) -> None:
    """trainer.strategy=ddp runs one training over the processes torchrun starts, and they share
    each batch evenly; torchrun with trainer.strategy=single would train one run per process."""
    world = ctx.torchrun.size if ctx.torchrun else None
    if cfg.trainer.strategy != "ddp":
        if world and world > 1 and not cfg.resume:  # a resumed run keeps its own strategy: checked on its config
            raise ConfigError(
                f"torchrun started {world} processes but trainer.strategy=single: each would train a run of its own. "
                "Add trainer.strategy=ddp to train one run on all of them."
            )
        return
    if ctx.multirun:
        raise ConfigError("trainer.strategy=ddp runs under torchrun, one run at a time; drop -m (--multirun).")
    if world is None:
        overrides = list(ctx.overrides)
        if not cfg.resume and "trainer.strategy" not in map(override_key, overrides):
            overrides.append("trainer.strategy=ddp")
        raise ConfigError(
            "trainer.strategy=ddp runs under torchrun, which starts the processes that share each batch; start it as:\n"
            f"  torchrun --nproc_per_node=2 -m mnist_cnn {shlex.join(overrides)}\n"
            "(--nproc_per_node: how many processes on this machine, e.g. one per GPU)."
        )
    if cfg.data.batch_size % world:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} does not divide by the {world} processes torchrun started "
            "(WORLD_SIZE): "
            f"it is the global batch, shared evenly; choose a multiple of {world}, or another --nproc_per_node."
        )


def _check_cuda_graph(cfg: DictConfig) -> None:
    """trainer.cuda_graph=true asks for a capture that has to happen (engine.graphs); null turns it
    off where it cannot."""
    if not cfg.trainer.cuda_graph:
        return
    fix = "set trainer.cuda_graph to null or false"
    if cfg.trainer.device == "cpu":
        raise ConfigError(f"trainer.cuda_graph=true needs a GPU but trainer.device=cpu; {fix}.")
    if cfg.trainer.strategy == "ddp":
        raise ConfigError(
            f"trainer.cuda_graph=true does not work with trainer.strategy=ddp (its all-reduce hooks); {fix}."
        )
    if cfg.trainer.compile:
        raise ConfigError(
            f"trainer.cuda_graph=true with trainer.compile=true: compile has CUDA graphs of its own; {fix}."
        )


def _typed_nodes(node, path: str = "") -> Iterator[Tuple[str, DictConfig]]:
    """Every dict node typed by a dataclass, with its dotted path (`model.layers.0`)."""
    if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
        yield path, node
    if isinstance(node, (DictConfig, ListConfig)):
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none():
                yield from _typed_nodes(child, f"{path}.{key}" if path else str(key))


def _check_keys(path: str, node: DictConfig) -> None:
    """Keys the schema does not have: Hydra lets `+key=value` add them, which would be logged and ignored."""
    schema = OmegaConf.get_type(node)
    known = [f.name for f in dataclasses.fields(schema)]
    for key in node.keys():
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"{unknown_key(where, schema)}; `+` cannot add keys to the schema.")


def unknown_key(where: str, schema: type) -> str:
    """`trainer.epoch: not a key of TrainerConfig (did you mean epochs? its keys: ...)`."""
    known = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(where.rpartition(".")[2], known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{where}: not a key of {schema.__name__} ({hint}its keys: {', '.join(known)})"


def _check_ranges(path: str, node: DictConfig) -> None:
    for f in dataclasses.fields(OmegaConf.get_type(node)):
        valid = f.metadata.get("range")
        value = node[f.name]
        if valid is None or value is None:
            continue
        where = f"{path}.{f.name}" if path else f.name
        values = list(value) if isinstance(value, ListConfig) else [value]
        if "length" in f.metadata and len(values) != f.metadata["length"]:
            raise ConfigError(f"{where} must hold {f.metadata['length']} numbers, got {len(values)}.")
        for v in values:
            if not valid.holds(v):
                raise ConfigError(f"{where} must be {valid} (and finite), got {v}.")
