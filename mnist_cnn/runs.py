"""`mnist-cnn-runs`: the runs of an experiment (or of one sweep) as a table, best first.

Reads through MLflow's search API, so it works the same on the local sqlite store and on a server.
"""

import argparse
import os
import sys
from typing import List, Optional

import pandas as pd

from mnist_cnn.sweep import run_name

COLUMNS = ["run_id", "name", "status", "overrides", "val_acc", "test_acc", "epochs", "wall_s"]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-runs", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--experiment", default="mnist", help="MLflow experiment name (default: mnist)")
    parser.add_argument("--sweep", metavar="PARENT_RUN_ID", help="only the jobs of this sweep's parent run")
    parser.add_argument("--sort", default="val_acc", metavar="METRIC", help="metric to sort by (default: val_acc)")
    parser.add_argument("--ascending", action="store_true", help="smallest first (for losses)")
    parser.add_argument("--top", type=int, metavar="N", help="show only the first N runs")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    return parser.parse_args(argv)


def runs_table(args: argparse.Namespace) -> pd.DataFrame:
    """One row per run with the COLUMNS above plus the sort metric, sorted; raises SystemExit on bad input."""
    import mlflow  # slow to import: after the arguments are parsed

    mlflow.set_tracking_uri(args.tracking_uri)
    try:
        experiment = mlflow.get_experiment_by_name(args.experiment)
    except Exception as e:
        sys.exit(f"mnist-cnn-runs: cannot read the MLflow store {args.tracking_uri} ({e}); check --tracking-uri.")
    if experiment is None:
        sys.exit(f"mnist-cnn-runs: no experiment {args.experiment!r} at {args.tracking_uri}; check --experiment.")
    where = f"tags.mlflow.parentRunId = '{args.sweep}'" if args.sweep else ""
    df = mlflow.search_runs([experiment.experiment_id], filter_string=where, max_results=50_000)
    if df.empty:
        sys.exit(f"mnist-cnn-runs: no runs in {args.experiment!r}" + (f" under parent run {args.sweep}" if args.sweep else "") + ".")
    sort = f"metrics.{args.sort}"
    if sort not in df:  # e.g. a sweep whose jobs all failed: still show them, unsorted
        metrics = sorted(c.removeprefix("metrics.") for c in df if c.startswith("metrics."))
        print(f"mnist-cnn-runs: no run has the metric {args.sort!r} (these do: {', '.join(metrics)}).", file=sys.stderr)
        df[sort] = float("nan")
    table = pd.DataFrame(
        {
            "run_id": df["run_id"],
            "name": df.get("tags.mlflow.runName"),
            "status": df["status"],
            "overrides": df.get("tags.hydra_overrides", pd.Series(dtype=str)).fillna("").map(lambda o: run_name(o.split()) or ""),
            "val_acc": df.get("metrics.val_acc"),
            "test_acc": df.get("metrics.test_acc"),
            "epochs": df.get("params.trainer.epochs"),
            "wall_s": (df["end_time"] - df["start_time"]).dt.total_seconds().round(1),
            args.sort: df[sort],
        }
    )
    table = table.loc[:, ~table.columns.duplicated()]
    table = table.sort_values(args.sort, ascending=args.ascending, na_position="last")
    return table.head(args.top) if args.top else table


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    table = runs_table(args)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}", formatters={"wall_s": "{:.1f}".format}, na_rep="-"))


if __name__ == "__main__":
    main()
