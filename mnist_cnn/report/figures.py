"""The figures every run logs under `plots/`, drawn with matplotlib's Agg backend (no display).

Figures are built without pyplot, so nothing global is touched and nothing is left open; labels use
the dataset's class names (Fashion-MNIST shows "Sneaker", not 7). Margins are fixed rather than
computed by a layout engine: these grids never change shape, and constrained layout measured every
label again at each save (its cost is in docs/speed.md).

The confusion matrix is the costliest of the three (its ticks, colour bar and a hundred numbers)
and, for one dataset, the same but for its cells, numbers and title. So its fixed parts are drawn
once per process (`ConfusionFrame`) and each run draws only what changes over a copy of them
(matplotlib's blitting), which halves its time in every job of a sweep after the first.
"""

import functools
import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave

from mnist_cnn.report.metrics import Report

# zlib's fastest level: a fifth of the encoding time of PIL's default for PNGs a sixth larger
FAST_PNG = {"compress_level": 1}


def run_figures(report: Report, history: Optional[List[Dict[str, float]]] = None) -> Dict[str, bytes]:
    """What a run logs under `plots/`, by file name, as PNG files: the confusion matrix and the most
    confident mistakes, and the learning curves when there is a history (an evaluation has none)."""
    pngs = {
        "confusion_matrix.png": confusion_frame(report.classes).png(report),
        "misclassified.png": png(misclassified(report)),
    }
    if history:
        pngs["learning_curves.png"] = png(learning_curves(history))
    return pngs


def png(figure: Figure) -> bytes:
    """`figure` drawn and encoded as a PNG file."""
    out = io.BytesIO()
    figure.savefig(out, format="png", pil_kwargs=FAST_PNG)
    return out.getvalue()


def learning_curves(history: List[Dict[str, float]]) -> Figure:
    """Train and validation loss (left) and accuracy (right) for each epoch."""
    fig = Figure(figsize=(10, 4), dpi=100)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    epochs = list(range(1, len(history) + 1))
    for ax, kind in zip(fig.subplots(1, 2), ("loss", "acc")):
        for split, style in (("train", "o-"), ("val", "s--")):
            values = [h.get(f"{split}_{kind}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, label=split)
        ax.set(
            xlabel="epoch",
            ylabel="loss" if kind == "loss" else "accuracy",
            title="loss" if kind == "loss" else "accuracy",
        )
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


class ConfusionFrame:
    """The test set's confusion matrix in one panel: each cell's count, coloured by its share of the
    true class (its row), so a class with few images shows its mistakes as clearly as a large one.
    One panel, not counts and shares side by side: the second hundred numbers doubled the drawing
    time every run pays (docs/speed.md); each class's recall is in classification_report.json.

    One frame per dataset (`confusion_frame`): its axes, class ticks, labels and colour bar are drawn
    once, into `background`; `png` sets the cells, numbers and title of a report and draws only
    those over it. `figure` holds everything, so drawing it whole shows the same picture."""

    def __init__(self, classes: Tuple[str, ...]) -> None:
        n = len(classes)
        self.figure = Figure(figsize=(7, 5.7), dpi=100)
        self.canvas = FigureCanvasAgg(self.figure)
        self.figure.subplots_adjust(left=0.14, right=0.97, bottom=0.17, top=0.9)
        self.ax = self.figure.subplots()
        self.cells = self.ax.imshow(np.zeros((n, n)), cmap="Blues", vmin=0, vmax=1)
        self.counts = [self.ax.text(j, i, "", ha="center", va="center", fontsize=8) for i in range(n) for j in range(n)]
        self.title = self.figure.suptitle("")
        _class_ticks(self.ax, classes)
        self.ax.set(xlabel="predicted", ylabel="true")
        self.figure.colorbar(self.cells, ax=self.ax, shrink=0.8, label="share of the true class")
        # what `png` draws, in a whole draw's order: the cells, then what touches them (the axes'
        # edges, the tick marks on them), then the numbers; kept out of the background, for a pixel
        # drawn twice is darker
        marks = [tick.tick1line for axis in (self.ax.xaxis, self.ax.yaxis) for tick in axis.get_major_ticks()]
        self.drawn = [self.cells, *self.ax.spines.values(), *marks, *self.counts]
        for artist in self.drawn:
            artist.set_visible(False)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.figure.bbox)
        for artist in self.drawn:
            artist.set_visible(True)

    def show(self, report: Report) -> None:
        """Set the cells, numbers and title to `report`'s; white numbers on the dark cells, none on
        the empty ones so the mistakes stand out."""
        counts = report.confusion.numpy()
        shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        self.cells.set_data(shares)
        for text, count, share in zip(self.counts, counts.flat, shares.flat):
            text.set_text(str(count) if count else "")
            text.set_color("white" if share > 0.5 else "black")
        self.title.set_text(f"confusion matrix on the test set (accuracy {report.accuracy:.4f})")

    def png(self, report: Report) -> bytes:
        """`report`'s confusion matrix as a PNG file: its cells, numbers and title drawn over the
        fixed parts."""
        self.show(report)
        self.canvas.restore_region(self.background)
        for artist in self.drawn:
            self.ax.draw_artist(artist)
        self.figure.draw_artist(self.title)
        out = io.BytesIO()
        imsave(out, self.canvas.buffer_rgba(), format="png", pil_kwargs=FAST_PNG)  # as savefig encodes it
        return out.getvalue()


@functools.lru_cache(maxsize=4)
def confusion_frame(classes: Tuple[str, ...]) -> ConfusionFrame:
    """The frame of a dataset's confusion matrix, made at its first run in this process."""
    return ConfusionFrame(classes)


def misclassified(report: Report, columns: int = 4) -> Figure:
    """The test images the model got wrong with the highest confidence, each captioned "true ->
    predicted (probability)". One mosaic in one axes (a grid of axes cost a quarter of a second more
    to draw), one line a caption in columns 2 inches wide: matplotlib draws text glyph by glyph, and
    two-line captions in wider columns took 88 ms to draw and save against 55 (docs/speed.md)."""
    mistakes = report.mistakes
    rows = max(1, -(-len(mistakes) // columns))
    size, gap, caption = 28, 4, 10  # pixels of an image, between images, and above each for its caption
    cell_w, cell_h = size + 2 * gap, size + caption + gap
    mosaic = np.zeros((rows * cell_h, columns * cell_w))
    height = 2.3 * rows + 0.4  # inches: 2 wide a column, 0.4 for the title
    fig = Figure(figsize=(2.0 * columns, height), dpi=100)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.4 / height)
    ax = fig.subplots()
    ax.axis("off")
    for k, m in enumerate(mistakes):
        top, left = (k // columns) * cell_h + caption, (k % columns) * cell_w + gap
        mosaic[top : top + size, left : left + size] = m.image.numpy()
        label = f"{report.classes[m.true]} → {report.classes[m.predicted]} ({m.probability:.2f})"
        ax.text(left + size / 2, top - 1, label, ha="center", va="bottom", fontsize=9)
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    if not mistakes:
        ax.text(mosaic.shape[1] / 2, mosaic.shape[0] / 2, "no test image was misclassified", ha="center", va="center")
    fig.suptitle("most confident mistakes on the test set: true → predicted (probability)")
    return fig


def _class_ticks(ax, classes: Sequence[str]) -> None:
    ticks, rotate = range(len(classes)), max(len(c) for c in classes) > 2  # "Ankle boot" needs the room
    ax.set_xticks(ticks, classes, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(ticks, classes)
