"""The figures of a sweep: how each swept key relates to the objective, what the objective costs
in training time, and (an Optuna search) which keys mattered. Built without pyplot, like
`mnist_cnn.report.figures`.

Both read the jobs table of `mnist_cnn.sweep.tables.jobs_table`: one row per job, swept values as
the strings MLflow stores ("1e-06", "64", "sgd"), so each axis decides for itself whether it is
numeric.
"""

from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mnist_cnn.names import PRUNED_AT, TRAIN_TIME
from mnist_cnn.sweep.tables import FINISHED, Objective, best_job


def parallel_coordinates(table: pd.DataFrame, swept: list[str], objectives: Sequence[Objective]) -> Figure:
    """One vertical axis per swept key and a last one for the first objective's metric; one line
    per job that finished or was pruned with a value of it, coloured by it. Pruned jobs are
    dashed, the best finished job (`best_job`) is drawn thick."""
    metric, direction = objectives[0]
    jobs = table[((table["status"] == FINISHED) | table[PRUNED_AT].notna()) & table[metric].notna()]
    fig = Figure(figsize=(2.2 * len(swept) + 4, 5.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.set_title(f"sweep: {metric} by swept key")
    if jobs.empty:
        return _nothing(ax, f"no job has a value of {metric} to plot")
    scales = [_scale(jobs[key]) for key in swept] + [_scale(jobs[metric], log_ok=False)]
    for x, (_, ticks, labels, _) in enumerate(scales):
        axis = ax.secondary_yaxis(x, transform=ax.transData, zorder=4)  # labels above the lines
        axis.set_alignment("right" if x == len(swept) else "left")
        axis.set_yticks(ticks, labels, fontsize=8)
        for tick in axis.yaxis.get_major_ticks():  # readable where the lines cross them
            for label in (tick.label1, tick.label2):
                label.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
    names = [f"{key}\n(log scale)" if log else key for key, (*_, log) in zip([*swept, metric], scales)]
    ax.set_xticks(range(len(names)), names)
    ax.set(xlim=(-0.1, len(swept) + 0.1), ylim=(-0.04, 1.04), yticks=[])
    ax.spines[:].set_visible(False)
    _draw_jobs(fig, ax, jobs, np.column_stack([s[0] for s in scales]), objectives)
    return fig


def pareto_front(table: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The FINISHED jobs no other one beats: none is at least as good on every objective while
    strictly better on one. Jobs missing a value are ignored; the front comes sorted by the second
    objective, and jobs tied on every value are all on it."""
    jobs = _scored(table, objectives)
    # Higher is better in every column. [i, j]: does job j beat job i? A sweep has tens of jobs: all pairs are cheap.
    score = np.column_stack([jobs[m].to_numpy(float) * (1 if d == "maximize" else -1) for m, d in objectives])
    no_worse = (score[None, :, :] >= score[:, None, :]).all(axis=2)
    better = (score[None, :, :] > score[:, None, :]).any(axis=2)
    front = jobs[~(no_worse & better).any(axis=1)]
    return front.sort_values(objectives[1][0], kind="stable")


def pareto(table: pd.DataFrame, objectives: Sequence[Objective], front: Optional[pd.DataFrame] = None) -> Figure:
    """The first objective against the second for each FINISHED job, the Pareto front (`front`, or
    the one `pareto_front` finds) marked, joined by a step line and named."""
    (metric, direction), (cost, cost_direction) = objectives[:2]
    jobs = _scored(table, objectives)
    front = pareto_front(jobs, objectives) if front is None else front.sort_values(cost, kind="stable")
    left_out = len(table) - len(jobs)
    fig = Figure(figsize=(8, 5.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    title = f"sweep: {metric} against {_label(cost)}"
    ax.set_title(
        title + (f"\n({left_out} of {len(table)} jobs left out: pruned, failed or unfinished)" if left_out else "")
    )
    if jobs.empty:
        return _nothing(ax, f"no finished job has both {metric} and {cost}")
    beaten = jobs[~jobs.index.isin(front.index)]
    ax.scatter(beaten[cost], beaten[metric], color="tab:gray", alpha=0.7, label="beaten by another job")
    ax.step(front[cost], front[metric], where="post", color="tab:red", alpha=0.5)
    ax.scatter(front[cost], front[metric], marker="*", s=160, color="tab:red", zorder=3, label="Pareto front")
    middle = (jobs[cost].min() + jobs[cost].max()) / 2
    for k, (_, job) in enumerate(front.iterrows()):
        # Names are long ("optimizer=adam,optimizer.lr=0.001,..."): they run towards the middle,
        # alternately above and below, and never shrink the plot to make room.
        left = job[cost] <= middle
        ax.annotate(
            job["name"],
            (job[cost], job[metric]),
            xytext=(8 if left else -8, 8 if k % 2 == 0 else -14),
            textcoords="offset points",
            ha="left" if left else "right",
            fontsize=8,
        ).set_in_layout(False)
    ax.set(xlabel=_label(cost), ylabel=metric)
    ax.margins(x=0.05, y=0.1)
    ax.grid(alpha=0.3)
    vertical = "up" if direction == "maximize" else "down"
    ax.legend(title=f"better: {vertical} and {'left' if cost_direction == 'minimize' else 'right'}")
    return fig


def importance(importances: dict[str, dict[str, float]]) -> Figure:
    """One panel per objective (metric: {searched key: its share of the metric's variance}, an
    Optuna search's fANOVA), one bar per key, the largest on top."""
    keys = sorted({key for shares in importances.values() for key in shares})
    fig = Figure(figsize=(7 * len(importances), 0.5 * len(keys) + 1.5), dpi=100, layout="constrained")
    fig.suptitle("sweep: what mattered")
    for ax, (metric, shares) in zip(np.atleast_1d(fig.subplots(1, len(importances))), importances.items()):
        order = sorted(shares, key=shares.get)
        ax.barh(order, [shares[key] for key in order], color="tab:blue")
        for y, key in enumerate(order):
            ax.text(shares[key], y, f" {shares[key]:.2f}", va="center", fontsize=9)
        ax.set_xlim(0, 1.1)
        ax.set_xlabel(f"share of the variance of {metric}\n(fANOVA over the completed trials)")
    return fig


def _scored(table: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The FINISHED jobs with a value of each objective: pruned jobs have no train time, failed ones no metric."""
    return table[(table["status"] == FINISHED) & table[[m for m, _ in objectives]].notna().all(axis=1)]


def _label(metric: str) -> str:
    return "train time (s)" if metric == TRAIN_TIME else metric


def _scale(values: pd.Series, log_ok: bool = True) -> tuple[np.ndarray, np.ndarray, list[str], bool]:
    """Where each job sits on one axis (0 to 1), the axis's ticks and their labels, and whether it is
    logarithmic. A missing value (a key a job never logged) is NaN, which breaks its line there."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() < values.notna().sum():  # a word such as "sgd": categories, evenly spaced
        categories = sorted(values.dropna().astype(str).unique())
        ticks = np.linspace(0, 1, len(categories)) if len(categories) > 1 else np.array([0.5])
        where = dict(zip(categories, ticks))
        return np.array([where.get(str(v), np.nan) for v in values]), ticks, categories, False
    lo, hi = numbers.min(), numbers.max()
    log = log_ok and lo > 0 and hi / lo >= 100  # learning rates: 1e-6 and 1e-3 both readable
    f = np.log10 if log else np.asarray

    def place(x):
        return (f(x) - f(lo)) / (f(hi) - f(lo)) if hi > lo else np.where(np.isnan(x), np.nan, 0.5)

    ticks = np.unique(numbers.dropna().to_numpy(float))
    if len(ticks) > 6 or (len(ticks) > 1 and np.diff(place(ticks)).min() < 0.04):  # too many or too close to label each
        ticks = (np.geomspace if log else np.linspace)(lo, hi, 5)
    return place(numbers.to_numpy(float)), place(ticks), [f"{v:.3g}" for v in ticks], log


def _draw_jobs(fig: Figure, ax, jobs: pd.DataFrame, positions: np.ndarray, objectives: Sequence[Objective]) -> None:
    """One line per job through its positions, its colour the metric's (the best end of the colour
    map is always the better one), with the colour bar and a legend of line styles."""
    metric, direction = objectives[0]
    cmap = colormaps["viridis" if direction == "maximize" else "viridis_r"]
    finished = jobs[jobs["status"] == FINISHED][metric]
    # The colours span the finished jobs: pruned jobs' early values would wash out their differences.
    scored = finished if finished.nunique() > 1 else jobs[metric]
    norm = Normalize(scored.min(), scored.max())
    low, high = jobs[metric].min() < norm.vmin, jobs[metric].max() > norm.vmax
    winner = best_job(jobs, objectives)
    best = winner.name if winner is not None else None  # its index
    pruned = jobs[PRUNED_AT].notna().to_numpy()
    for row, (index, job), dashed in zip(positions, jobs.iterrows(), pruned):
        ax.plot(
            range(len(row)),
            row,
            color=cmap(norm(job[metric])),
            label=job["name"],
            marker="o",
            markersize=3,
            linestyle="--" if dashed else "-",
            linewidth=3.5 if index == best else 1.5,
            zorder=3 if index == best else 2,
        )
    extend = "both" if low and high else "min" if low else "max" if high else "neither"
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=metric, extend=extend)
    styles = [Line2D([], [], color="gray", label="finished")]
    styles += [Line2D([], [], color="gray", linestyle="--", label="pruned")] if pruned.any() else []
    styles += (
        [Line2D([], [], color="gray", linewidth=3.5, label=f"best: {jobs.loc[best, 'name']}")]
        if best is not None
        else []
    )
    fig.legend(handles=styles, loc="outside lower center", ncols=len(styles), fontsize=9)


def _nothing(ax, message: str) -> Figure:
    """A figure that says why it is empty, so a sweep without results still logs its figures."""
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    return ax.figure
