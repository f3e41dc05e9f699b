"""`data.augment`: random shifts, rotations and zooms of training images, drawn from the run's seed."""

import pytest
import torch
from omegaconf import OmegaConf

from mnist_cnn.data import augment
from mnist_cnn.data.splits import Split, batches
from mnist_cnn.runner import train
from tests.helpers.mlflow_store import runs_by_name

WARPS = OmegaConf.create({"translate": 0.1, "rotate": 15.0, "scale": 0.1})
NONE = OmegaConf.create({"translate": 0.0, "rotate": 0.0, "scale": 0.0})


def digits(n: int = 8) -> Split:
    """Blank borders with a random blob in the middle, like MNIST."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 8:20, 10:18] = torch.randint(
        1, 256, (n, 12, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return Split(images, torch.arange(n) % 10)


def test_no_warp_leaves_images_as_they_are():
    images = digits().images.unsqueeze(1).float() / 255
    theta = augment.draw(NONE, len(images), torch.Generator().manual_seed(0))
    assert not augment.active(NONE) and augment.active(WARPS)
    assert torch.allclose(augment.warp(images, theta), images, atol=1e-6)


def test_a_shift_of_one_pixel_moves_the_image_by_one_pixel():
    images = digits(2).images.unsqueeze(1).float() / 255
    # 1/28 of the side, in [-1, 1] coordinates
    theta = torch.tensor([[1.0, 0.0, 2 / 28], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    shifted = augment.warp(images, theta)
    assert torch.allclose(shifted[..., :-1], images[..., 1:], atol=1e-6)
    assert torch.equal(shifted[..., -1], torch.zeros_like(shifted[..., -1]))  # black comes in at the edge


def test_warps_are_drawn_within_their_limits_and_fill_them():
    theta = augment.draw(WARPS, 4000, torch.Generator().manual_seed(0))
    angle = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    zoom = 1 / torch.linalg.det(theta[:, :, :2]).sqrt()
    shift = theta[:, :, 2] / 2
    for values, limit in ((angle, 15.0), (zoom - 1, 0.1), (shift, 0.1)):
        assert values.abs().max() <= limit * (1 + 1e-5)
        assert values.abs().max() > 0.95 * limit and values.mean().abs() < 0.1 * limit  # spread both ways


def test_training_batches_are_warped_alike_for_one_seed_and_evaluation_never():
    split = digits(64)
    plain = list(batches(split, 16, torch.Generator().manual_seed(3)))
    warped = [list(batches(split, 16, torch.Generator().manual_seed(3), augment=WARPS)) for _ in range(2)]
    for (a, la), (b, lb), (p, lp) in zip(*warped, plain):
        assert torch.equal(a, b) and torch.equal(la, lb)  # reproducible from the seed
        assert torch.equal(la, lp) and not torch.allclose(a, p)  # the same shuffle, warped images
        assert a.shape == p.shape and a.min() >= 0 and a.max() <= 1
    for (e, _), (p, _) in zip(batches(split, 16, augment=WARPS), batches(split, 16)):  # evaluation: no generator
        assert torch.equal(e, p)


def test_ddp_shards_are_warped_as_in_one_process():
    split = digits(32)
    whole = list(batches(split, 8, torch.Generator().manual_seed(5), augment=WARPS))
    shards = [
        list(batches(split, 8, torch.Generator().manual_seed(5), shard=(rank, 2), augment=WARPS)) for rank in (0, 1)
    ]
    for (images, labels), (x0, y0), (x1, y1) in zip(whole, *shards):
        assert torch.allclose(images[0::2], x0) and torch.allclose(images[1::2], x1)
        assert torch.equal(labels[0::2], y0) and torch.equal(labels[1::2], y1)


def test_an_augmented_run_repeats_bit_for_bit_and_differs_from_a_plain_one(tiny_cfg, store_uri, tmp_path):
    warps = ("data.augment.rotate=15", "data.augment.translate=0.1", "data.augment.scale=0.1")
    for name, extra in (("a", warps), ("b", warps), ("plain", ())):
        train.run(
            tiny_cfg("trainer.epochs=2", "tracking.log_model=false", f"tracking.run_name={name}", *extra),
            tmp_path / name,
        )
    runs = runs_by_name(store_uri)
    sha = {name: run.data.tags["weights_sha256"] for name, run in runs.items()}
    assert sha["a"] == sha["b"] != sha["plain"]
    assert runs["a"].data.params["data.augment.rotate"] == "15.0"


@pytest.mark.parametrize("key", ["translate", "rotate", "scale"])
def test_each_warp_alone_changes_the_images(key):
    one = OmegaConf.merge(NONE, {key: WARPS[key]})
    images = digits(16).images.unsqueeze(1).float() / 255
    assert not torch.allclose(
        augment.warp(images, augment.draw(one, 16, torch.Generator().manual_seed(0))), images, atol=1e-3
    )
