"""The figures every run logs under `plots/`, drawn with matplotlib's Agg backend (no display).

Each function returns a `matplotlib.figure.Figure` built without pyplot, so nothing global is
touched and nothing is left open; labels use the dataset's class names (Fashion-MNIST shows
"Sneaker", not 7). Margins are fixed rather than computed by a layout engine: these grids never
change shape, and constrained layout measured every label again at each save (its cost is in
docs/speed.md).
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from mnist_cnn.report.metrics import Report


def run_figures(report: Report, history: Optional[List[Dict[str, float]]] = None) -> Dict[str, Figure]:
    """What a run logs under `plots/`, by file name: the confusion matrix and the most confident
    mistakes, and the learning curves when there is a history (an evaluation has none)."""
    figures = {"confusion_matrix.png": confusion_matrix(report), "misclassified.png": misclassified(report)}
    if history:
        figures["learning_curves.png"] = learning_curves(history)
    return figures


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


def confusion_matrix(report: Report) -> Figure:
    """The test set's confusion matrix in one panel: each cell's count, coloured by its share of the
    true class (its row), so a class with few images shows its mistakes as clearly as a large one.
    One panel, not counts and shares side by side: the second hundred numbers doubled the drawing
    time every run pays (docs/speed.md); each class's recall is in classification_report.json."""
    counts = report.confusion.numpy()
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(7, 5.7), dpi=100)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.17, top=0.9)
    ax = fig.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    _annotate(ax, counts, rows)
    _class_ticks(ax, report.classes)
    ax.set(xlabel="predicted", ylabel="true")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    fig.suptitle(f"confusion matrix on the test set (accuracy {report.accuracy:.4f})")
    return fig


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


def _annotate(ax, counts: np.ndarray, shares: np.ndarray) -> None:
    """Each cell's count, white on the dark cells; empty cells stay blank so the mistakes stand out."""
    for (i, j), count in np.ndenumerate(counts):
        if count:
            ax.text(
                j, i, str(count), ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.5 else "black"
            )


def _class_ticks(ax, classes: Sequence[str]) -> None:
    ticks, rotate = range(len(classes)), max(len(c) for c in classes) > 2  # "Ankle boot" needs the room
    ax.set_xticks(ticks, classes, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(ticks, classes)
