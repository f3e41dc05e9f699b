"""Assemble the `nn.Sequential` that `layers.plan_layers` describes, and print its summary.

The model normalises its own input, so the logged model takes raw [0, 1] pixels and needs no
preprocessing code from this package.
"""

from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import nn

from mnist_cnn.model.layers import Layer, Shape, fmt


class Normalize(nn.Module):
    """(x - mean) / std, with the constants kept as buffers so they follow the model to any device."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(plan: List[Layer], mean: Optional[float] = None, std: Optional[float] = None) -> nn.Sequential:
    """One module per planned layer, in order; with `mean`/`std` the model normalises first."""
    modules: Dict[str, nn.Module] = OrderedDict()
    if mean is not None and std is not None:
        modules["normalize"] = Normalize(mean, std)
    for layer in plan:
        module = getattr(nn, layer.module)(**layer.args)
        if layer.init == "xavier_uniform":
            nn.init.xavier_uniform_(module.weight)
        elif layer.init == "kaiming_normal":
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        modules[layer.name] = module
    return nn.Sequential(modules)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summary(model: nn.Sequential, plan: List[Layer], in_shape: Shape) -> str:
    """A table of each module with its output shape and parameter count, for the start of a run."""
    shapes = {"normalize": in_shape, **{layer.name: layer.out_shape for layer in plan}}
    rows = [("layer", "module", "output", "params")]
    for name, module in model.named_children():
        rows.append((name, type(module).__name__, fmt(shapes[name]), f"{count_params(module):,}"))
    rows.append(("total", "", "", f"{count_params(model):,}"))
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
