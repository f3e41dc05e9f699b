"""Turn a user's picture of one character (PNG, JPEG, any size, colour or grey, dark ink on light
paper or light ink on dark) into the 28x28 image the models were trained on.

The steps are the ones that made MNIST itself from scanned digits: grey; the background black and
the ink bright; cropped to the ink; scaled to fit a 20x20 box, keeping the aspect ratio, with
anti-aliasing; placed in a 28x28 field so that its centre of mass is the centre. A model sees
the result as float pixels in [0, 1], as it saw the training images.
"""

import errno
import stat
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_cnn.data.datasets import SIDE
from mnist_cnn.errors import DataError

BOX = 20  # MNIST's digits fit a 20x20 box inside the 28x28 field
INK = 0.2  # after the background is made 0 and the brightest ink 1: fainter pixels do not count as ink
MIN_CONTRAST = 0.1  # ink that differs from the background by less (about 25 grey levels) is no ink


def load_image(path: Union[str, Path]) -> torch.Tensor:
    """The file at `path` as a float32 tensor (1, 28, 28) in [0, 1]; DataError naming the file if it
    cannot be read or shows no ink. Only regular files are opened: a FIFO would block forever."""
    _check_regular_file(Path(path))
    try:
        with Image.open(path) as image:
            image.load()  # Pillow reads lazily: a truncated file fails here, not later
    except PermissionError as e:
        raise DataError(f"{path}: permission denied; make the file readable.") from e
    except UnidentifiedImageError as e:
        raise DataError(f"{path}: not an image Pillow can read; pass a PNG or JPEG file.") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: larger than Pillow reads ({e}); pass a smaller picture of the character.") from e
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's ways of saying "corrupt"
        raise DataError(f"{path}: cannot be read ({e}); the file is truncated or corrupt.") from e
    try:
        return to_mnist(image)
    except DataError as e:
        raise DataError(f"{path}: {e}") from e


def _check_regular_file(path: Path) -> None:
    """DataError unless `path` is a regular file (after its links): one line for each other case."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file.") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: too many levels of symbolic links (a link that leads back to itself).") from e
        raise DataError(f"{path}: cannot be read ({e.strerror or e}).") from e
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a folder; pass image files (PNG or JPEG).")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a FIFO, socket or device); pass an image file (PNG or JPEG).")


def to_mnist(image: Image.Image) -> torch.Tensor:
    """`image` as MNIST would have made it: float32 tensor (1, 28, 28) in [0, 1], ink bright on black.
    DataError if the image is blank (no ink to find)."""
    pixels = _ink_on_black(_grey(image))
    rows, cols = np.nonzero(pixels > INK)
    if len(rows) == 0:
        raise DataError(
            f"the image is blank: no ink stands out from the background by more than {MIN_CONTRAST:.0%} of the "
            "grey range; pass a picture of one dark character on light paper, or a light one on dark."
        )
    ink = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return torch.from_numpy(_centre_by_mass(_fit_box(ink)))[None]


def _grey(image: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1], the right way up; a transparent background counts as white paper."""
    image = ImageOps.exif_transpose(image)  # a phone's photo is stored sideways with a note to turn it
    if image.mode.startswith("I;16"):  # 16-bit grey: Pillow's conversion to 8 bits would clip, not scale
        return np.asarray(image, dtype=np.float32) / 65535
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def _ink_on_black(grey: np.ndarray) -> np.ndarray:
    """The background (the median of the border pixels) made 0 and the brightest ink 1: inverted if
    the paper is lighter than the ink, and stretched so grey paper and faded ink look like MNIST."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if background > 0.5:
        grey, background = 1 - grey, 1 - background
    contrast = float(grey.max()) - background
    if contrast < MIN_CONTRAST:
        return np.zeros_like(grey)
    return np.clip((grey - background) / contrast, 0, 1)


def _fit_box(ink: np.ndarray) -> np.ndarray:
    """`ink` scaled, keeping its aspect ratio, so that its longer side is BOX pixels."""
    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Lanczos anti-aliases when shrinking and stays sharp when enlarging; it rings slightly past [0, 1].
    scaled = Image.fromarray(np.ascontiguousarray(ink, dtype=np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(scaled), 0, 1)


def _centre_by_mass(ink: np.ndarray) -> np.ndarray:
    """A SIDE x SIDE field with `ink` placed so that its centre of mass falls on the field's centre."""
    rows, cols = np.indices(ink.shape)
    mass = ink.sum()
    centre = SIDE / 2  # where MNIST's own digits have theirs (pixel 14, not the geometric 13.5)
    top = round(centre - float((rows * ink).sum() / mass))
    left = round(centre - float((cols * ink).sum() / mass))
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    # A lopsided character may be pushed partly past the edge: keep what still falls inside.
    src_top, src_left = max(0, -top), max(0, -left)
    dst_top, dst_left = max(0, top), max(0, left)
    height = min(ink.shape[0] - src_top, SIDE - dst_top)
    width = min(ink.shape[1] - src_left, SIDE - dst_left)
    field[dst_top : dst_top + height, dst_left : dst_left + width] = ink[
        src_top : src_top + height, src_left : src_left + width
    ]
    return field
