"""Build the network from `model.layers`, inferring every shape and rejecting impossible configs.

Each entry of `model.layers` is one layer (`conv`, `relu`, `maxpool`, `avgpool`, `batchnorm`,
`dropout`, `flatten`, `linear`) or a `block`: conv [+ batchnorm] + ReLU [+ pool], the tutorial's
"one layer" notation. Input channels and the flatten size follow from the input shape, so a config
never types them. Every error names the layer index and key, e.g.
`model.layers[5] maxpool: input is 1x1, kernel_size 2 does not fit`.

The result is an `nn.Sequential` that normalises its own input, so the model logged to MLflow
(exported with torch.export) takes raw [0, 1] pixels and loads without this package installed.
"""

from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from mnist_cnn.errors import ConfigError

Shape = Tuple[int, ...]  # one sample: (channels, height, width), or (features,) once flat

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


class Normalize(nn.Module):
    """(x - mean) / std, with the constants kept as buffers so they follow the model to any device."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(
    layers: Sequence[Mapping[str, Any]],
    in_shape: Shape,
    num_classes: int,
    mean: Optional[float] = None,
    std: Optional[float] = None,
) -> nn.Sequential:
    """Assemble `layers` for inputs of `in_shape`; with `mean`/`std` the model normalises first."""
    modules: Dict[str, nn.Module] = {}
    if mean is not None and std is not None:
        modules["normalize"] = Normalize(mean, std)
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
        for suffix, module, shape in _expand(kind, spec, shape, where):
            modules[f"{kind}{i}{suffix}"] = module
    _check_head(layers, modules, num_classes)
    return nn.Sequential(OrderedDict(modules))


def _expand(kind: str, spec: dict, shape: Shape, where: str) -> List[Tuple[str, nn.Module, Shape]]:
    """The modules one config entry stands for, each with its output shape."""
    if kind == "block":
        out = [("_conv", *_conv(spec, shape, where))]
        if spec.get("batchnorm", False):
            out.append(("_bn", *_batchnorm(out[-1][2], where)))
        out.append(("_relu", nn.ReLU(), out[-1][2]))
        pool = spec.get("pool", "max")
        if pool not in ("max", "avg", "none"):
            raise ConfigError(f"{where}: pool must be max, avg or none, got {pool!r}.")
        if pool != "none":
            size = _positive(spec, "pool_size", where, default=2)
            out.append((f"_{pool}pool", *_pool(pool, size, size, out[-1][2], where, "pool_size")))
        return out
    if kind == "conv":
        return [("", *_conv(spec, shape, where))]
    if kind in ("maxpool", "avgpool"):
        size = _positive(spec, "kernel_size", where)
        stride = _positive(spec, "stride", where, default=size)
        return [("", *_pool(kind[:3], size, stride, shape, where, "kernel_size"))]
    if kind == "batchnorm":
        return [("", *_batchnorm(shape, where))]
    if kind == "relu":
        return [("", nn.ReLU(), shape)]
    if kind == "dropout":
        p = spec.get("p", 0.5)
        if not 0 <= p < 1:
            raise ConfigError(f"{where}: p must be in [0, 1), got {p}.")
        return [("", nn.Dropout(p), shape)]
    if kind == "flatten":
        return [("", nn.Flatten(), (_numel(shape),))]
    return [("", *_linear(spec, shape, where))]


def _conv(spec: dict, shape: Shape, where: str) -> Tuple[nn.Module, Shape]:
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
    conv = nn.Conv2d(channels, out_channels, kernel, stride=stride, padding=padding)
    _init(conv, spec.get("init", "default"), where)
    side = lambda n: (n + 2 * padding - kernel) // stride + 1  # noqa: E731
    return conv, (out_channels, side(height), side(width))


def _pool(kind: str, kernel: int, stride: int, shape: Shape, where: str, key: str) -> Tuple[nn.Module, Shape]:
    channels, height, width = _spatial(shape, where)
    if kernel > min(height, width):
        raise ConfigError(f"{where}: input is {height}x{width}, {key} {kernel} does not fit.")
    pool = nn.MaxPool2d(kernel, stride) if kind == "max" else nn.AvgPool2d(kernel, stride)
    side = lambda n: (n - kernel) // stride + 1  # noqa: E731
    return pool, (channels, side(height), side(width))


def _batchnorm(shape: Shape, where: str) -> Tuple[nn.Module, Shape]:
    return nn.BatchNorm2d(_spatial(shape, where)[0]), shape


def _linear(spec: dict, shape: Shape, where: str) -> Tuple[nn.Module, Shape]:
    if len(shape) != 1:
        raise ConfigError(f"{where}: input is {_fmt(shape)}; add a layer {{type: flatten}} before it.")
    linear = nn.Linear(shape[0], _positive(spec, "out_features", where))
    _init(linear, spec.get("init", "default"), where)
    return linear, (linear.out_features,)


def _init(layer: nn.Module, how: str, where: str) -> None:
    """Re-initialise the weight; `default` keeps PyTorch's own init (bias always keeps it)."""
    if how not in INITS:
        raise ConfigError(f"{where}: init must be one of {', '.join(INITS)}, got {how!r}.")
    if how == "xavier_uniform":
        nn.init.xavier_uniform_(layer.weight)
    elif how == "kaiming_normal":
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")


def _check_head(layers: Sequence[Mapping[str, Any]], modules: Dict[str, nn.Module], num_classes: int) -> None:
    """The network must end in a linear layer with one output per class."""
    last_name, last = list(modules.items())[-1] if layers else ("", None)
    if not isinstance(last, nn.Linear):
        ends = f"it ends with {last_name}" if last is not None else "it has no layers"
        raise ConfigError(
            f"model.layers: no classifier head: the last layer must be {{type: linear, out_features: "
            f"{num_classes}}} ({ends})."
        )
    if last.out_features != num_classes:
        raise ConfigError(
            f"model.layers[{len(layers) - 1}] linear: out_features is {last.out_features} but the dataset "
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
    return int(torch.Size(shape).numel())


def _fmt(shape: Shape) -> str:
    return "x".join(str(n) for n in shape)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(model: nn.Sequential, in_shape: Shape) -> str:
    """A table of each module with its output shape and parameter count, for the start of a run."""
    rows = [("layer", "module", "output", "params")]
    x = torch.zeros(1, *in_shape)
    model_was_training = model.training
    model.eval()
    with torch.no_grad():
        for name, module in model.named_children():
            x = module(x)
            params = sum(p.numel() for p in module.parameters())
            rows.append((name, type(module).__name__, _fmt(tuple(x.shape[1:])), f"{params:,}"))
    model.train(model_was_training)
    rows.append(("total", "", "", f"{count_params(model):,}"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
