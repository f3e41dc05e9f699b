"""Find the one character in a picture of paper: which pixels are its ink, and how dark they are.

A phone's photo of a digit is mostly paper, with noise, JPEG blocks, ruled lines or squares, and
light that falls off or is cut by a shadow. The steps, each undoing one of these:

1. The light: the paper's brightness at each point, from a grey closing (a maximum, then a minimum,
   over a window half the picture's shorter side) of the smoothed picture. It removes every dark
   mark narrower than the window and keeps the paper's slow changes and a shadow's straight edge
   (a closing leaves a step as it was). Ink is how much darker than that light a pixel is, as a
   fraction of it: 0 on paper in light or in shadow, the same for one pen on both.
2. Smoothing before thresholding (a Gaussian of 1.5 pixels in a 480-pixel photo): noise and JPEG
   blocks average away, strokes are wider and stay.
3. The threshold, from the picture's own histogram: Otsu's, taken twice. The first separates the
   paper from every mark; the second, among the marks, the faint ones (ruled lines, squares, what
   noise is left) from the ink. On a clean picture the second keeps the strokes' middles, which is
   enough to find them: their pixels come back in step 5.
4. Stroke groups (8-connected pixels). Not a character: a faint group (no pixel MIN_INK darker
   than the paper: lines and squares in a shadow's edge), a ruled line, a grid of squares or the
   sheet's edge (longer than half the picture, thinner than 1/25 of its length), and a blot on the
   picture's edge (thicker than 40% of its length: where a closing cannot follow a shadow into a
   corner narrower than its window). Groups whose boxes come within 35% of the largest
   group's length of each other are one character; another character is a set of groups farther
   away with at least a tenth of its ink (a "1" beside a "0" has a fifth). Smaller marks farther away
   are dirt and are dropped.
5. The character's pixels: its stroke groups widened by the smoothing's reach (the strokes' soft
   edges); every other pixel is exactly 0.
"""

import numpy as np
from scipy import ndimage
from scipy.sparse.csgraph import connected_components

from mnist_cnn.errors import DataError

SMOOTH = 1 / 320  # the smoothing's sigma, of the shorter side: 1.5 pixels in a 480-pixel photo, none on 28x28
MIN_INK = 0.4  # no mark this much darker than the paper (a fraction of its light): blank, however lined or squared
NEAR = 0.35  # stroke groups this close (a fraction of the largest group's length) are one character
SECOND = 0.1  # a far set of groups with this much of the character's ink (a fraction) is another character
LINE_SPAN, LINE_THIN = 0.5, 1 / 25  # a group this long (of the picture's side) and thinner (of its length): a line
BLOT = 0.4  # a group on the picture's edge thicker than this (a fraction of its length) is a shadow's blot

BLANK = (
    f"the image is blank: no mark is {MIN_INK:.0%} darker than the paper around it (ruled lines and squares are "
    "fainter); pass a picture of one dark character on light paper, or a light one on dark."
)


def smooth(picture: np.ndarray) -> np.ndarray:
    """`picture` smoothed by a Gaussian whose sigma is SMOOTH of its shorter side."""
    return ndimage.gaussian_filter(picture, SMOOTH * min(picture.shape))


def ink(paper_light: np.ndarray) -> np.ndarray:
    """How much darker than the light on the paper each pixel is, in [0, 1], of a grey picture whose
    paper is the lighter part."""
    light = ndimage.grey_closing(smooth(paper_light), size=max(3, min(paper_light.shape) // 2))
    return np.clip((light - paper_light) / np.maximum(light, 1 / 255), 0, 1)  # 0 on black paper: no light, no ink


def character(ink: np.ndarray) -> np.ndarray:
    """`ink` with every pixel but the one character's made exactly 0, and its darkest strokes 1;
    DataError if the picture shows no character, or several."""
    smoothed = smooth(ink)
    if smoothed.max() < MIN_INK:
        raise DataError(BLANK)
    strokes = smoothed > _otsu(smoothed[smoothed > _otsu(smoothed)])
    groups, _ = ndimage.label(strokes, structure=np.ones((3, 3)))
    kept = _the_character(groups, smoothed)
    region = ndimage.binary_dilation(kept, np.ones((3, 3)), iterations=1 + int(2 * SMOOTH * min(ink.shape)))
    level = max(float(np.percentile(ink[kept], 99)), 1 / 255)  # the darkest ink, but not one pixel of noise
    return np.where(region, np.clip(ink / level, 0, 1), 0).astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold: the one that makes the variance between the two classes it splits largest."""
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts) / counts.sum()  # the share of values in each bin or under it
    mean_below = np.cumsum(counts * centres) / counts.sum()
    between = (mean_below[-1] * below - mean_below) ** 2 / np.maximum(below * (1 - below), 1e-12)
    return float(edges[1 + np.argmax(between[:-1])])


def _the_character(groups: np.ndarray, smoothed: np.ndarray) -> np.ndarray:
    """The pixels of the one character among the labelled stroke `groups` of the `smoothed` ink;
    DataError for none or several."""
    labels = np.arange(1, groups.max() + 1)
    boxes = np.array([(r.start, r.stop, c.start, c.stop) for r, c in ndimage.find_objects(groups)]).reshape(-1, 4)
    strokes = _strokes(groups, labels, boxes) & (np.asarray(ndimage.maximum(smoothed, groups, labels)) >= MIN_INK)
    if not strokes.any():
        raise DataError(BLANK)
    reach = NEAR * _lengths(boxes)[strokes].max()
    # Groups whose boxes come within `reach` of each other, directly or through others, are one character.
    gap_rows = np.maximum(boxes[:, None, 0], boxes[None, :, 0]) - np.minimum(boxes[:, None, 1], boxes[None, :, 1])
    gap_cols = np.maximum(boxes[:, None, 2], boxes[None, :, 2]) - np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    near = (gap_rows <= reach) & (gap_cols <= reach) & strokes[:, None] & strokes[None, :]
    _, characters = connected_components(near, directed=False)
    ink = np.bincount(characters, weights=ndimage.sum(groups > 0, groups, labels) * strokes)
    first = int(np.argmax(ink))
    if (ink >= SECOND * ink[first]).sum() > 1:
        raise DataError(
            f"several characters: {(ink >= SECOND * ink[first]).sum()} groups of strokes far apart from each other; "
            "crop the picture to one character."
        )
    return np.isin(groups, labels[(characters == first) & strokes])


def _strokes(groups: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """For each labelled group: whether its shape may be part of a character (not a ruled line, nor a blot)."""
    lengths = _lengths(boxes)
    thickness = 2 * np.asarray(ndimage.maximum(ndimage.distance_transform_edt(groups > 0), groups, labels))
    line = (lengths >= LINE_SPAN * min(groups.shape)) & (thickness < LINE_THIN * lengths)
    on_edge = (
        (boxes[:, 0] == 0) | (boxes[:, 2] == 0) | (boxes[:, 1] == groups.shape[0]) | (boxes[:, 3] == groups.shape[1])
    )
    return ~line & ~(on_edge & (thickness > BLOT * lengths))


def _lengths(boxes: np.ndarray) -> np.ndarray:
    """The longer side of each box (rows start, stop, columns start, stop)."""
    return np.maximum(boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2])
