"""MNIST test digits made to look like phone photos of paper, the way users send them: grey paper
with noise, the digit small and off-centre in a wider frame, plain, lined or squared paper, a shadow
across the sheet, the camera turned and tilted by up to 10 degrees, saved as JPEG.

Every photo is made from its digit and its index alone (a seeded generator), so the set is the same
on every machine. `python -m tests.helpers.photos DIR` writes the photos of the first 20 test digits
into DIR, to look at.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

WIDTH, HEIGHT = 640, 480
PAPERS = ("plain", "lined", "squared")
SHADOWS = ("gradient", "edge")  # light fading across the sheet; a soft-edged shadow (a hand, a phone) over part of it


def photo(digit: np.ndarray, index: int) -> Image.Image:
    """`digit` (MNIST's 28x28 uint8, white on black) as a photo of it written on paper: the paper kind
    and the shadow take turns with `index`, which also seeds everything drawn at random."""
    rng = np.random.default_rng(index)
    margin = 120  # drawn wider than the frame, so that turning it leaves no empty corners
    shape = (HEIGHT + 2 * margin, WIDTH + 2 * margin)
    paper = rng.uniform(150, 200) + ndimage.gaussian_filter(rng.normal(0, 40, shape), 25)  # blotchy grey
    paper = _rule(paper, PAPERS[index % len(PAPERS)], rng)
    sheet = _write(paper, digit, rng, margin)
    sheet = sheet * _shadow(shape, SHADOWS[index % len(SHADOWS)], rng)
    image = _turn_and_tilt(Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8)), rng)
    image = image.crop((margin, margin, margin + WIDTH, margin + HEIGHT))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(6, 12), (HEIGHT, WIDTH))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _rule(paper: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Ruled lines (every ~40 pixels) or a grid of squares (~30), two pixels thick and fainter than ink,
    as on real paper."""
    if kind == "plain":
        return paper
    spacing = int(rng.integers(36, 44) if kind == "lined" else rng.integers(26, 34))
    rows, cols = np.indices(paper.shape)
    line = (rows + int(rng.integers(spacing))) % spacing < 2
    if kind == "squared":
        line |= (cols + int(rng.integers(spacing))) % spacing < 2
    return np.where(line, paper - rng.uniform(20, 35), paper)


def _write(paper: np.ndarray, digit: np.ndarray, rng: np.random.Generator, margin: int) -> np.ndarray:
    """The digit (or digits side by side) in dark ink, 18-28% of the frame's height, placed well away from the
    frame's centre."""
    height = int(HEIGHT * rng.uniform(0.18, 0.28) * 28 / 20)  # MNIST's digits fill 20 of their 28 pixels
    width = height * digit.shape[1] // digit.shape[0]  # digits side by side make a wider picture
    ink = np.asarray(Image.fromarray(digit).resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255
    dx, dy = rng.choice([-1, 1], 2) * rng.uniform([0.12, 0.1], [0.3, 0.22]) * (WIDTH - width + height, HEIGHT)
    top, left = margin + int(HEIGHT / 2 + dy - height / 2), margin + int(WIDTH / 2 + dx - width / 2)
    sheet = paper.copy()
    region = sheet[top : top + height, left : left + width]
    region[...] = region * (1 - ink) + rng.uniform(20, 60) * ink
    return sheet


def _shadow(shape: tuple, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Light on the sheet, 1 where it is brightest: a fall to 60-75% across it, in a random direction,
    or a shadow with a soft edge (about 40 pixels wide) darkening one side to 55-70%."""
    rows, cols = np.indices(shape, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    along = (cols - shape[1] / 2) * np.cos(angle) + (rows - shape[0] / 2) * np.sin(angle)
    if kind == "gradient":
        return 1 - rng.uniform(0.25, 0.4) * (along - along.min()) / np.ptp(along)
    edge = 1 / (1 + np.exp(-(along - rng.uniform(-150, 150)) / 12))
    return 1 - rng.uniform(0.3, 0.45) * edge


def _turn_and_tilt(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The camera turned up to 10 degrees either way, and tilted up to 10 degrees towards the top
    (the far side of the sheet comes out narrower)."""
    image = image.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BICUBIC, fillcolor=128)
    width, height = image.size
    squeeze = width * np.tan(np.radians(rng.uniform(0, 10))) / 4  # each top corner moves in this far
    corners = [(squeeze, 0), (width - squeeze, 0), (width, height), (0, height)]
    return image.transform(
        image.size, Image.Transform.PERSPECTIVE, _perspective(corners, image.size), Image.Resampling.BICUBIC
    )


def _perspective(corners: list, size: tuple) -> list:
    """Pillow's 8 coefficients that map the output rectangle onto the quadrilateral `corners` of the input."""
    width, height = size
    rectangle = [(0, 0), (width, 0), (width, height), (0, height)]
    rows = []
    for (x, y), (u, v) in zip(rectangle, corners):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return list(np.linalg.solve(np.array(rows, dtype=float), np.array(corners, dtype=float).ravel()))


def write_photos(digits: np.ndarray, folder: Path, quality: tuple = (40, 70)) -> list:
    """Each digit as a JPEG photo in `folder` (JPEG quality drawn from `quality`), in order; their paths."""
    paths = []
    for index, digit in enumerate(digits):
        path = folder / f"{index:02d}-{PAPERS[index % len(PAPERS)]}-{SHADOWS[index % len(SHADOWS)]}.jpg"
        quality_here = int(np.random.default_rng(1000 + index).integers(*quality))
        photo(digit, index).save(path, quality=quality_here)
        paths.append(path)
    return paths


if __name__ == "__main__":
    from mnist_cnn.data.idx import load_split  # torch, only when run as a script
    from tests.helpers.data import REAL_DATA

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for path in write_photos(load_split(str(REAL_DATA), "mnist", "test").images.numpy()[:20], out):
        print(path)
