"""Turn a user's picture of one character (PNG, JPEG, any size, colour or grey, dark ink on light
paper or light ink on dark, a scan or a phone's photo) into the 28x28 image the models were trained on.

First the character is found (mnist_cnn.data.character): the light on the paper undone, noise and
JPEG blocks smoothed away, ruled lines, squares and specks left out, the paper made exactly black.
Then the steps that made MNIST itself from scanned digits: cropped to the ink; scaled to fit a
20x20 box, keeping the aspect ratio, with anti-aliasing; placed in a 28x28 field so that its centre
of mass is the centre. A model sees the result as float pixels in [0, 1], as it saw the training
images.
"""

import errno
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_cnn.data import character
from mnist_cnn.data.datasets import SIDE
from mnist_cnn.errors import DataError

BOX = 20  # MNIST's digits fit a 20x20 box inside the 28x28 field
INK = 0.2  # after the background is made 0 and the brightest ink 1: fainter pixels do not count as ink
READ_SIDE = 1024  # larger pictures (a phone's 4000x3000) are read shrunk to this: the character ends up 20x20
# Larger pictures are refused before they are decoded: a PNG cannot be decoded shrunk, and one of
# 13000x13000 (684 KB on disk) took 3.9 GB and 12 s. A JPEG is first read at 1/2, 1/4 or 1/8 of
# its size, as its format allows, so a phone's 50-megapixel photo is read at 12 or 3 megapixels.
MAX_PIXELS = 25_000_000


def load_image(path: Union[str, Path]) -> torch.Tensor:
    """The file at `path` as a float32 tensor (1, 28, 28) in [0, 1]; DataError naming the file if it
    cannot be read or shows no character, or several. Only regular files are opened: a FIFO would block forever."""
    _check_regular_file(Path(path))
    return read_picture(path, str(path))


def read_picture(source: Union[str, Path, BinaryIO], name: str) -> torch.Tensor:
    """`source` (a path, or an open binary file such as a picture sent to mnist-cnn-demo) as a float32
    tensor (1, 28, 28) in [0, 1]; DataError, its message starting with `name`, if it cannot be read
    or shows no character, or several."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            image = Image.open(source)  # reads the header only
        with image:
            image.draft(None, (READ_SIDE, READ_SIDE))  # a JPEG decodes shrunk, still at least READ_SIDE a side
            _check_size(name, image)
            image.load()  # Pillow reads lazily: a truncated file fails here, not later
    except PermissionError as e:
        raise DataError(f"{name}: permission denied; make the file readable.") from e
    except UnidentifiedImageError as e:
        raise DataError(f"{name}: not an image Pillow can read; pass a PNG or JPEG file.") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{name}: larger than Pillow reads ({e}); pass a smaller picture of the character.") from e
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's ways of saying "corrupt"
        raise DataError(f"{name}: cannot be read ({e}); the file is truncated or corrupt.") from e
    try:
        return to_mnist(image)
    except DataError as e:
        raise DataError(f"{name}: {e}") from e


def _check_size(name: str, image: Image.Image) -> None:
    """DataError when `image` (as it will be decoded) has more than MAX_PIXELS pixels."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise DataError(
            f"{name}: {width}x{height} pixels, more than the {MAX_PIXELS // 1_000_000} megapixels a picture may have; "
            f"pass a smaller picture of the character (it is shrunk to {READ_SIDE} pixels a side anyway)."
        )


def save_image(image: torch.Tensor, path: Union[str, Path, BinaryIO]) -> None:
    """A prepared image (a tensor (1, 28, 28) in [0, 1]) as the 8-bit grey PNG a user can look at."""
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(path, format="PNG")


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
    DataError if the image shows no character, or several."""
    pixels = character.character(character.ink(_paper_light(_shrunk(_grey(image)))))
    rows, cols = np.nonzero(pixels > INK)
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


def _shrunk(grey: np.ndarray) -> np.ndarray:
    """`grey` averaged down so that its longer side is at most READ_SIDE pixels."""
    scale = READ_SIDE / max(grey.shape)
    if scale >= 1:
        return grey
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX))


def _paper_light(grey: np.ndarray) -> np.ndarray:
    """`grey` turned, where the ink is lighter than the paper, so that the paper is the lighter part.
    The paper's level is the median of the border pixels. Light multiplies, so marks are compared in
    ratio: the ink is taken to be dark unless the lightest mark stands out from the paper by the
    square of the darkest one's ratio (MNIST's white on black, chalk on a board), which a lit patch
    beside a shadow never does."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    smooth = character.smooth(np.maximum(grey, 1 / 255))  # one noisy pixel is no mark
    paper = max(float(np.median(border)), 1 / 255)
    return 1 - grey if smooth.max() / paper > (paper / smooth.min()) ** 2 else grey


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
