"""Random affine warps of training batches (`data.augment`): shift, rotation and zoom, per image.

The warp runs on the batch where it lives (the GPU when training there), as one `affine_grid` and
one `grid_sample` for the whole batch. Its random numbers come from the run's data generator, the
one that shuffles each epoch (`splits.batches` draws a whole epoch's warps after its permutation),
so an augmented run is as reproducible and resumable as any other.
Under DDP every rank draws the numbers for the whole global batch and keeps its own share, so the
images are warped exactly as in a single process. Evaluation never warps.
"""

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig


def active(cfg: DictConfig) -> bool:
    """True when `data.augment` asks for any warp at all."""
    return bool(cfg.translate or cfg.rotate or cfg.scale)


def draw(cfg: DictConfig, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine matrices for `affine_grid`, each drawn uniformly within `cfg`'s limits.

    A matrix maps an output pixel to where it samples the input, in coordinates from -1 to 1 across
    the image: a shift of `translate` (a fraction of the side) is 2 * translate there. Every range
    is symmetric, so the direction each warp goes in needs no care."""
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # four numbers in [-1, 1) per image
    angle = u[:, 0] * math.radians(cfg.rotate)
    zoom = 1 + u[:, 1] * cfg.scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift = u[:, 2:] * 2 * cfg.translate
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """`images` (B, 1, H, W) warped by `theta` (B, 2, 3) on the same device, bilinear, with black (0)
    coming in at the edges."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
