"""The layer kinds `model.layers` can name, and the plan of torch modules they expand to.

`KINDS` is the one registry of layer kinds: each is a function decorated with `@kind(name, keys)`
that checks its keys and returns the modules it stands for with their output shapes. The config
schema (`LayerSpec`), the checks and the builder all read it, so a new kind is one new function
here (plus its new keys in `PARAMS`).

Nothing here imports torch, so `mnist-cnn-train` rejects an impossible model within a second.
Input channels and the flatten size follow from the input shape, so a config never types them.
Every error names the layer index and key, e.g.
`model.layers[5] maxpool: input is 1x1, kernel_size 2 does not fit.`
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mnist_cnn.errors import ConfigError

Shape = Tuple[int, ...]  # one sample: (channels, height, width), or (features,) once flat


class Init(StrEnum):
    """How a conv or linear layer's weights start; biases always keep PyTorch's init."""

    default = "default"  # PyTorch's own
    xavier_uniform = "xavier_uniform"
    kaiming_normal = "kaiming_normal"


class Pool(StrEnum):
    max = "max"
    avg = "avg"
    none = "none"


# Every key a layer entry may set besides `type`, with its type; config.schema.LayerSpec is built from it.
PARAMS: Dict[str, type] = {
    "out_channels": int,
    "kernel_size": int,
    "stride": int,  # conv and block default 1; pools default kernel_size
    "padding": int,  # default 0
    "out_features": int,
    "p": float,  # dropout probability, default 0.5
    "init": Init,
    "batchnorm": bool,  # block: conv -> batchnorm -> relu, default false
    "pool": Pool,  # block, default max
    "pool_size": int,  # block: pooling kernel and stride, default 2
}


@dataclass
class Layer:
    """One torch module to build: its `torch.nn` class, constructor arguments and output shape."""

    name: str  # module name in the model, e.g. block0_conv
    module: str  # torch.nn class name, e.g. Conv2d
    out_shape: Shape
    args: Dict[str, Any] = field(default_factory=dict)
    init: str = "default"


Expand = Callable[[Dict[str, Any], Shape, str], List[Layer]]


@dataclass(frozen=True)
class Kind:
    keys: Tuple[str, ...]  # the PARAMS this kind takes; any other key set on the entry is an error
    expand: Expand  # (entry's keys, input shape, "model.layers[i] kind") -> layers, named by suffix


KINDS: Dict[str, Kind] = {}


def kind(name: str, *keys: str) -> Callable[[Expand], Expand]:
    """Register the decorated function as layer kind `name`, taking `keys`."""
    unknown = set(keys) - set(PARAMS)
    assert not unknown, f"layer kind {name}: add {unknown} to PARAMS"

    def register(expand: Expand) -> Expand:
        KINDS[name] = Kind(keys, expand)
        return expand

    return register


def plan_layers(layers: Sequence[Mapping[str, Any]], in_shape: Shape, num_classes: int) -> List[Layer]:
    """The modules `layers` stands for, with every shape inferred from `in_shape`."""
    plan: List[Layer] = []
    shape = in_shape
    for i, raw in enumerate(layers):
        spec = {k: v for k, v in dict(raw).items() if v is not None}
        name = spec.pop("type", None)
        if name not in KINDS:
            raise ConfigError(f"model.layers[{i}]: unknown type {name!r}; use one of {', '.join(KINDS)}.")
        where = f"model.layers[{i}] {name}"
        extra = sorted(set(spec) - set(KINDS[name].keys))
        if extra:
            allowed = ", ".join(sorted(KINDS[name].keys)) or "no other keys"
            raise ConfigError(f"{where}: key {extra[0]!r} does not apply to {name} (it takes {allowed}).")
        for layer in KINDS[name].expand(spec, shape, where):
            layer.name = f"{name}{i}{layer.name}"
            plan.append(layer)
            shape = layer.out_shape
    _check_head(len(layers), plan, num_classes)
    return plan


@kind("conv", "out_channels", "kernel_size", "stride", "padding", "init")
def conv(spec: dict, shape: Shape, where: str, name: str = "") -> List[Layer]:
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
    return [Layer(name, "Conv2d", (out_channels, side(height), side(width)), args, _choice(spec, "init", Init, where))]


@kind("block", "out_channels", "kernel_size", "stride", "padding", "init", "batchnorm", "pool", "pool_size")
def block(spec: dict, shape: Shape, where: str) -> List[Layer]:
    """conv [+ batchnorm] + ReLU [+ pool]: the tutorial's notion of one layer.

    With max pooling the ReLU comes after the pool: ReLU never lowers an order, so max then ReLU
    gives the same outputs and the same gradients bit for bit, on a quarter of the values (on a
    CPU, the tutorial net's fp32 step was 15-30% faster).
    """
    conv_keys = {k: v for k, v in spec.items() if k in KINDS["conv"].keys}
    out = conv(conv_keys, shape, where, "_conv")
    if spec.get("batchnorm", False):
        out += batchnorm({}, out[-1].out_shape, where, "_bn")
    pool = _choice(spec, "pool", Pool, where, default="max")
    if pool == "avg":  # averaging does not commute with ReLU
        out += relu({}, out[-1].out_shape, where, "_relu")
    if pool != "none":
        size = _positive(spec, "pool_size", where, default=2)
        out.append(_pool(f"{pool}pool", size, size, out[-1].out_shape, where, "pool_size", f"_{pool}pool"))
    if pool != "avg":
        out += relu({}, out[-1].out_shape, where, "_relu")
    return out


@kind("relu")
def relu(spec: dict, shape: Shape, where: str, name: str = "") -> List[Layer]:
    return [Layer(name, "ReLU", shape)]


@kind("maxpool", "kernel_size", "stride")
def maxpool(spec: dict, shape: Shape, where: str) -> List[Layer]:
    size = _positive(spec, "kernel_size", where)
    return [_pool("maxpool", size, _positive(spec, "stride", where, default=size), shape, where, "kernel_size", "")]


@kind("avgpool", "kernel_size", "stride")
def avgpool(spec: dict, shape: Shape, where: str) -> List[Layer]:
    size = _positive(spec, "kernel_size", where)
    return [_pool("avgpool", size, _positive(spec, "stride", where, default=size), shape, where, "kernel_size", "")]


@kind("batchnorm")
def batchnorm(spec: dict, shape: Shape, where: str, name: str = "") -> List[Layer]:
    return [Layer(name, "BatchNorm2d", shape, dict(num_features=_spatial(shape, where)[0]))]


@kind("dropout", "p")
def dropout(spec: dict, shape: Shape, where: str) -> List[Layer]:
    p = spec.get("p", 0.5)
    if not 0 <= p < 1:
        raise ConfigError(f"{where}: p must be in [0, 1), got {p}.")
    return [Layer("", "Dropout", shape, {"p": p})]


@kind("flatten")
def flatten(spec: dict, shape: Shape, where: str) -> List[Layer]:
    size = 1
    for side in shape:
        size *= side
    return [Layer("", "Flatten", (size,))]


@kind("linear", "out_features", "init")
def linear(spec: dict, shape: Shape, where: str) -> List[Layer]:
    if len(shape) != 1:
        raise ConfigError(f"{where}: input is {fmt(shape)}; add a layer {{type: flatten}} before it.")
    out = _positive(spec, "out_features", where)
    return [
        Layer("", "Linear", (out,), dict(in_features=shape[0], out_features=out), _choice(spec, "init", Init, where))
    ]


def _pool(kind_: str, kernel: int, stride: int, shape: Shape, where: str, key: str, name: str) -> Layer:
    channels, height, width = _spatial(shape, where)
    if kernel > min(height, width):
        raise ConfigError(f"{where}: input is {height}x{width}, {key} {kernel} does not fit.")
    side = lambda n: (n - kernel) // stride + 1  # noqa: E731
    module = "MaxPool2d" if kind_ == "maxpool" else "AvgPool2d"
    return Layer(name, module, (channels, side(height), side(width)), dict(kernel_size=kernel, stride=stride))


def _check_head(n_entries: int, plan: List[Layer], num_classes: int) -> None:
    """The network must end in a linear layer with one output per class."""
    if not plan or plan[-1].module != "Linear":
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


def _choice(spec: dict, key: str, options: type, where: str, default: str = "default") -> str:
    value = spec.get(key, default)
    if value not in {option.value for option in options}:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(o.value for o in options)}, got {value!r}.")
    return value


def _spatial(shape: Shape, where: str) -> Shape:
    if len(shape) != 3:
        raise ConfigError(f"{where}: input is already flat ({shape[0]} features); put this layer before flatten.")
    return shape


def fmt(shape: Shape) -> str:
    return "x".join(str(n) for n in shape)
