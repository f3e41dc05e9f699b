"""Check a composed config and infer every layer's shape, in plain Python.

Nothing here imports torch, so `mnist-cnn-train` rejects an impossible config within a second or so,
before the heavy imports. Each entry of `model.layers` is one layer (`conv`, `relu`, `maxpool`,
`avgpool`, `batchnorm`, `dropout`, `flatten`, `linear`) or a `block`: conv [+ batchnorm] + ReLU
[+ pool], the tutorial's "one layer" notation. Input channels and the flatten size follow from the
input shape, so a config never types them. Every error names the layer index and key, e.g.
`model.layers[5] maxpool: input is 1x1, kernel_size 2 does not fit`.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mnist_cnn.datasets import SIDE, dataset_info
from mnist_cnn.errors import ConfigError

Shape = Tuple[int, ...]  # one sample: (channels, height, width), or (features,) once flat
IN_SHAPE: Shape = (1, SIDE, SIDE)

# The keys each layer type takes besides `type`; any other key set on the layer is an error.
LAYER_KEYS: Dict[str, set] = {
    "conv": {"out_channels", "kernel_size", "stride", "padding", "init"},
    "block": {"out_channels", "kernel_size", "stride", "padding", "init", "batchnorm", "pool", "pool_size"},
    "relu": set(),
    "maxpool": {"kernel_size", "stride"},
    "avgpool": {"kernel_size", "stride"},
    "batchnorm": set(),
    "dropout": {"p"},
    "flatten": set(),
    "linear": {"out_features", "init"},
}
INITS = ("default", "xavier_uniform", "kaiming_normal")
CHOICES = {
    "optimizer.name": ("adam", "adamw", "sgd"),
    "scheduler.name": ("none", "step", "cosine", "onecycle"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "objective.direction": ("maximize", "minimize"),
    "trainer.precision": (None, "32", "bf16"),
}


@dataclass
class Layer:
    """One torch module to build: its kind, constructor arguments and output shape for one sample."""

    name: str  # module name in the model, e.g. block0_conv
    kind: str  # conv | batchnorm | relu | maxpool | avgpool | dropout | flatten | linear
    out_shape: Shape
    args: Dict[str, Any] = field(default_factory=dict)
    init: str = "default"


def check_config(cfg) -> List[Layer]:
    """Every check that needs no data and no torch; returns the layer plan of `cfg.model`."""
    for key, allowed in CHOICES.items():
        group, name = key.split(".")
        if cfg[group][name] not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {cfg[group][name]!r}.")
    for key in ("data.batch_size", "data.eval_batch_size", "trainer.epochs"):
        group, name = key.split(".")
        if cfg[group][name] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[group][name]}.")
    if cfg.trainer.limit_batches is not None and cfg.trainer.limit_batches <= 0:
        raise ConfigError(f"trainer.limit_batches must be a positive integer or null, got {cfg.trainer.limit_batches}.")
    if cfg.data.val_size < 0:
        raise ConfigError(f"data.val_size must be 0 or more, got {cfg.data.val_size}.")
    return plan_layers(cfg.model.layers, IN_SHAPE, len(dataset_info(cfg.data.name).classes))


def plan_layers(layers: Sequence[Mapping[str, Any]], in_shape: Shape, num_classes: int) -> List[Layer]:
    """The modules `layers` stands for, with every shape inferred from `in_shape`."""
    plan: List[Layer] = []
    shape = in_shape
    for i, raw in enumerate(layers):
        spec = {k: v for k, v in dict(raw).items() if v is not None}
        kind = spec.pop("type", None)
        where = f"model.layers[{i}] {kind}"
        if kind not in LAYER_KEYS:
            raise ConfigError(f"model.layers[{i}]: unknown type {kind!r}; use one of {', '.join(LAYER_KEYS)}.")
        extra = sorted(set(spec) - LAYER_KEYS[kind])
        if extra:
            allowed = ", ".join(sorted(LAYER_KEYS[kind])) or "no other keys"
            raise ConfigError(f"{where}: key {extra[0]!r} does not apply to {kind} (it takes {allowed}).")
        for layer in _expand(kind, spec, shape, where):
            layer.name = f"{kind}{i}{layer.name}"
            plan.append(layer)
            shape = layer.out_shape
    _check_head(len(layers), plan, num_classes)
    return plan


def _expand(kind: str, spec: dict, shape: Shape, where: str) -> List[Layer]:
    """The layers one config entry stands for; each `name` is the suffix after `<type><index>`."""
    if kind == "block":
        out = [_conv(spec, shape, where, "_conv")]
        if spec.get("batchnorm", False):
            out.append(_batchnorm(out[-1].out_shape, where, "_bn"))
        out.append(Layer("_relu", "relu", out[-1].out_shape))
        pool = spec.get("pool", "max")
        if pool not in ("max", "avg", "none"):
            raise ConfigError(f"{where}: pool must be max, avg or none, got {pool!r}.")
        if pool != "none":
            size = _positive(spec, "pool_size", where, default=2)
            out.append(_pool(f"{pool}pool", size, size, out[-1].out_shape, where, "pool_size", f"_{pool}pool"))
        return out
    if kind == "conv":
        return [_conv(spec, shape, where, "")]
    if kind in ("maxpool", "avgpool"):
        size = _positive(spec, "kernel_size", where)
        return [_pool(kind, size, _positive(spec, "stride", where, default=size), shape, where, "kernel_size", "")]
    if kind == "batchnorm":
        return [_batchnorm(shape, where, "")]
    if kind == "dropout":
        p = spec.get("p", 0.5)
        if not 0 <= p < 1:
            raise ConfigError(f"{where}: p must be in [0, 1), got {p}.")
        return [Layer("", "dropout", shape, {"p": p})]
    if kind == "flatten":
        return [Layer("", "flatten", (_numel(shape),))]
    if kind == "relu":
        return [Layer("", "relu", shape)]
    return [_linear(spec, shape, where)]


def _conv(spec: dict, shape: Shape, where: str, name: str) -> Layer:
    channels, height, width = _spatial(shape, where)
    out_channels = _positive(spec, "out_channels", where)
    kernel = _positive(spec, "kernel_size", where)
    stride = _positive(spec, "stride", where, default=1)
    padding = spec.get("padding", 0)
    if not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"{where}: padding must be a non-negative integer, got {padding!r}.")
    if kernel > min(height, width) + 2 * padding:
        raise ConfigError(
            f"{where}: input is {height}x{width} (padding {padding}), kernel_size {kernel} does not fit; "
            "use a smaller kernel_size, more padding, or less downsampling before this layer."
        )
    side = lambda n: (n + 2 * padding - kernel) // stride + 1  # noqa: E731
    args = dict(in_channels=channels, out_channels=out_channels, kernel_size=kernel, stride=stride, padding=padding)
    return Layer(name, "conv", (out_channels, side(height), side(width)), args, _init(spec, where))


def _pool(kind: str, kernel: int, stride: int, shape: Shape, where: str, key: str, name: str) -> Layer:
    channels, height, width = _spatial(shape, where)
    if kernel > min(height, width):
        raise ConfigError(f"{where}: input is {height}x{width}, {key} {kernel} does not fit.")
    side = lambda n: (n - kernel) // stride + 1  # noqa: E731
    return Layer(name, kind, (channels, side(height), side(width)), dict(kernel_size=kernel, stride=stride))


def _batchnorm(shape: Shape, where: str, name: str) -> Layer:
    return Layer(name, "batchnorm", shape, dict(num_features=_spatial(shape, where)[0]))


def _linear(spec: dict, shape: Shape, where: str) -> Layer:
    if len(shape) != 1:
        raise ConfigError(f"{where}: input is {fmt(shape)}; add a layer {{type: flatten}} before it.")
    out = _positive(spec, "out_features", where)
    return Layer("", "linear", (out,), dict(in_features=shape[0], out_features=out), _init(spec, where))


def _init(spec: dict, where: str) -> str:
    how = spec.get("init", "default")
    if how not in INITS:
        raise ConfigError(f"{where}: init must be one of {', '.join(INITS)}, got {how!r}.")
    return how


def _check_head(n_entries: int, plan: List[Layer], num_classes: int) -> None:
    """The network must end in a linear layer with one output per class."""
    if not plan or plan[-1].kind != "linear":
        ends = f"it ends with {plan[-1].name}" if plan else "it has no layers"
        raise ConfigError(
            f"model.layers: no classifier head: the last layer must be {{type: linear, out_features: "
            f"{num_classes}}} ({ends})."
        )
    if plan[-1].out_shape[0] != num_classes:
        raise ConfigError(
            f"model.layers[{n_entries - 1}] linear: out_features is {plan[-1].out_shape[0]} but the dataset "
            f"has {num_classes} classes; set out_features: {num_classes}."
        )


def _positive(spec: dict, key: str, where: str, default: Optional[int] = None) -> int:
    value = spec.get(key, default)
    if value is None:
        raise ConfigError(f"{where}: {key} is required.")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}.")
    return value


def _spatial(shape: Shape, where: str) -> Shape:
    if len(shape) != 3:
        raise ConfigError(f"{where}: input is already flat ({shape[0]} features); put this layer before flatten.")
    return shape


def _numel(shape: Shape) -> int:
    n = 1
    for side in shape:
        n *= side
    return n


def fmt(shape: Shape) -> str:
    return "x".join(str(n) for n in shape)

