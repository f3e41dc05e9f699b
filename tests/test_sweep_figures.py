"""A sweep's figures from hand-made jobs tables: the Pareto front, the parallel coordinates' lines
and axes, and tables with nothing or little to plot (no MLflow, no training)."""

import math

import numpy as np
import pandas as pd
import pytest

from mnist_cnn.sweep.plots import parallel_coordinates, pareto, pareto_front
from mnist_cnn.sweep.tables import best_job

SWEPT = ["optimizer.lr", "data.batch_size", "optimizer.name", "seed"]
TIME = ("train_time_s", "minimize")
BY_TIME = [("val_acc", "maximize"), TIME]  # what a single-objective sweep's pareto.png plots


def jobs(*rows: tuple) -> pd.DataFrame:
    """A jobs table like `jobs_table`'s: (name, status, pruned at, metric, train time, **swept)."""
    return pd.DataFrame(
        [
            {
                "name": name,
                "status": status,
                "pruned_at_epoch": pruned,
                "val_acc": metric,
                "train_time_s": time,
                **swept,
            }
            for name, status, pruned, metric, time, swept in rows
        ]
    )


def finished(name: str, metric: float, time: float, **swept) -> tuple:
    return name, "FINISHED", math.nan, metric, time, swept


def pruned(name: str, metric: float, **swept) -> tuple:
    return name, "KILLED", 2.0, metric, math.nan, swept


def failed(name: str, **swept) -> tuple:
    return name, "FAILED", math.nan, math.nan, math.nan, swept


def four_keys() -> pd.DataFrame:
    return jobs(
        finished(
            "b",
            0.975,
            30.0,
            **{"optimizer.lr": "0.001", "data.batch_size": "128", "optimizer.name": "sgd", "seed": "2"},
        ),
        finished(
            "a",
            0.987,
            34.0,
            **{"optimizer.lr": "0.001", "data.batch_size": "64", "optimizer.name": "adam", "seed": "1"},
        ),
        finished(
            "c",
            0.991,
            55.0,
            **{"optimizer.lr": "0.0001", "data.batch_size": "32", "optimizer.name": "adam", "seed": "1"},
        ),
        pruned("d", 0.41, **{"optimizer.lr": "1e-05", "data.batch_size": "32", "optimizer.name": "adam", "seed": "2"}),
        pruned("e", 0.12, **{"optimizer.lr": "1e-06", "data.batch_size": "128", "optimizer.name": "sgd", "seed": "1"}),
        failed("f", **{"optimizer.lr": "0.03"}),
    )


def axis_labels(fig, key_index: int) -> list[str]:
    """The tick labels of one vertical axis of a parallel-coordinates figure."""
    return [t.get_text() for t in fig.axes[0].child_axes[key_index].get_yticklabels()]


def assert_png(fig, path) -> None:
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_pareto_front_keeps_only_the_jobs_nothing_beats():
    table = jobs(
        finished("cheap", 0.98, 20.0),
        finished("cheap twin", 0.98, 20.0),  # ties with "cheap" on both: neither beats the other
        finished("as cheap, worse", 0.96, 20.0),
        finished("dearer, worse", 0.97, 25.0),
        finished("accurate", 0.99, 30.0),
        finished("as accurate, dearer", 0.99, 35.0),
        pruned("pruned", 0.995),  # no train time: left out though its value is the highest
        failed("failed"),
    )
    assert pareto_front(table, BY_TIME)["name"].tolist() == ["cheap", "cheap twin", "accurate"]


def test_pareto_front_follows_the_direction():
    losses = jobs(
        finished("a", 0.05, 20.0),
        finished("b", 0.03, 30.0),
        finished("c", 0.06, 25.0),
        finished("d", 0.03, 40.0),
        finished("e", 0.02, 50.0),
    )
    assert pareto_front(losses, [("val_acc", "minimize"), TIME])["name"].tolist() == ["a", "b", "e"]
    assert pareto_front(losses, BY_TIME)["name"].tolist() == ["a", "c"]


def test_pareto_figure_names_the_front_and_counts_the_jobs_left_out(tmp_path):
    fig = pareto(four_keys(), BY_TIME)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["b", "a", "c"]  # the front, cheapest first
    assert ax.lines[0].get_xdata().tolist() == [30.0, 34.0, 55.0]  # the step line through it
    assert "3 of 6 jobs left out" in ax.get_title()
    assert ax.get_xlabel() == "train time (s)" and ax.get_ylabel() == "val_acc"
    assert_png(fig, tmp_path / "pareto.png")


def test_pareto_front_weighs_every_objective_and_the_best_job_is_on_it():
    """Three objectives: a job beaten on val_acc and time is still on the front if its loss is the
    lowest; the best job is the best first metric, a tie going to the better second one."""
    table = jobs(
        finished("fast", 0.97, 10.0),
        finished("accurate", 0.99, 30.0),
        finished("accurate, slower", 0.99, 40.0),  # ties "accurate" on val_acc, beaten on time
        finished("beaten but lowest loss", 0.96, 20.0),
        finished("beaten", 0.96, 25.0),
    )
    table["val_loss"] = [0.10, 0.05, 0.05, 0.01, 0.30]
    objectives = [("val_acc", "maximize"), TIME, ("val_loss", "minimize")]
    front = pareto_front(table, objectives)["name"].tolist()
    assert front == ["fast", "beaten but lowest loss", "accurate"]
    assert pareto_front(table, objectives[:2])["name"].tolist() == ["fast", "accurate"]
    assert best_job(table, objectives)["name"] == "accurate"  # not the slower twin


def test_pareto_figure_marks_the_front_it_is_given():
    """An Optuna search's parent draws the front its study found (here, as a test, a made-up one)."""
    table = four_keys()
    fig = pareto(table, BY_TIME, front=table[table["name"] == "c"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["c"]
    assert sorted(ax.collections[0].get_offsets()[:, 0].tolist()) == [30.0, 34.0]  # the others: beaten, grey


def test_parallel_coordinates_draws_each_finished_or_pruned_job(tmp_path):
    fig = parallel_coordinates(four_keys(), SWEPT, [("val_acc", "maximize")])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert sorted(lines) == ["a", "b", "c", "d", "e"]  # not the failed job
    assert [name for name, line in lines.items() if line.get_linestyle() == "--"] == ["d", "e"]
    assert max(lines, key=lambda name: lines[name].get_linewidth()) == "c"  # the best
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["finished", "pruned", "best: c"]
    assert fig.axes[1].get_ylabel() == "val_acc"  # the colour bar
    assert_png(fig, tmp_path / "parallel.png")


def test_parallel_coordinates_axes_show_the_swept_values():
    fig = parallel_coordinates(four_keys(), SWEPT, [("val_acc", "maximize")])
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert names == ["optimizer.lr\n(log scale)", "data.batch_size", "optimizer.name", "seed", "val_acc"]
    assert axis_labels(fig, 0) == ["1e-06", "1e-05", "0.0001", "0.001"]
    assert axis_labels(fig, 1) == ["32", "64", "128"]
    assert axis_labels(fig, 2) == ["adam", "sgd"]  # in order, though the first job used sgd
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}
    assert (lines["e"][0], lines["a"][0]) == (0.0, 1.0)  # lr 1e-6 at the bottom, 1e-3 at the top
    assert lines["d"][0] == pytest.approx(1 / 3)  # a decade above 1e-6 out of three: log scale
    assert lines["b"][1] == 1.0 and lines["a"][1] == pytest.approx(1 / 3)  # 64 between 32 and 128: linear


def test_parallel_coordinates_with_one_key_or_one_value(tmp_path):
    table = jobs(
        finished("a", 0.98, 20.0, **{"optimizer.lr": "0.001", "seed": "1"}),
        finished("b", 0.99, 30.0, **{"optimizer.lr": "0.002", "seed": "1"}),
    )
    one_key = parallel_coordinates(table, ["optimizer.lr"], [("val_acc", "maximize")])
    assert len(one_key.axes[0].get_lines()) == 2
    assert_png(one_key, tmp_path / "one_key.png")
    constant = parallel_coordinates(table, ["optimizer.lr", "seed"], [("val_acc", "maximize")])
    assert [line.get_ydata()[1] for line in constant.axes[0].get_lines()] == [0.5, 0.5]
    assert axis_labels(constant, 1) == ["1"]
    assert_png(constant, tmp_path / "constant.png")
    alone = parallel_coordinates(table.iloc[:1], ["optimizer.lr"], [("val_acc", "maximize")])
    assert np.array_equal(alone.axes[0].get_lines()[0].get_ydata(), [0.5, 0.5])
    assert_png(alone, tmp_path / "alone.png")


@pytest.mark.parametrize("table", [four_keys().iloc[:0], four_keys().iloc[[5]]], ids=["no jobs", "only a failed job"])
def test_nothing_to_plot_says_so(table, tmp_path):
    lines = parallel_coordinates(table, SWEPT, [("val_acc", "maximize")])
    assert lines.axes[0].texts[0].get_text() == "no job has a value of val_acc to plot"
    scatter = pareto(table, BY_TIME)
    assert scatter.axes[0].texts[0].get_text() == "no finished job has both val_acc and train_time_s"
    assert_png(lines, tmp_path / "lines.png")
    assert_png(scatter, tmp_path / "scatter.png")
