"""`mnist-cnn-runs`: the runs of an experiment (or of one sweep) as a table, best first.

Reads through MLflow's search API, so it works the same on the local sqlite store and on a server;
an unreachable server fails within seconds. A RUNNING run whose heartbeat stopped (its process was
killed, or lost the server) is shown as STALE, with the command that resumes it. `--group-seeds`
shows one row per configuration apart from the seed: how many seeds, mean and std.

`mnist-cnn-runs diff RUN_A RUN_B [--format table|json]` shows what two runs differ in: the config
keys (dotted, with both values), the fingerprints (seed, weights, data, config, code commit,
versions, device, precision), the final metrics side by side, and the first epoch where their
per-epoch metrics part (each epoch's timings left out: they differ between any two runs).
"""

import argparse
import json
import math
import shlex
import sys
import wsgiref.simple_server
from typing import List, Optional, Tuple

import pandas as pd

from mnist_cnn import names
from mnist_cnn.cli.common import run_command, tracking_uri_argument
from mnist_cnn.config.keys import is_run_setting
from mnist_cnn.errors import ConfigError, UserError
from mnist_cnn.names import PRUNED_AT, SEED_METRICS, TEST_ACC, VAL_ACC
from mnist_cnn.tracking.links import experiment_url, resume_command, ui_base
from mnist_cnn.tracking.redact import redact
from mnist_cnn.tracking.run_names import run_name
from mnist_cnn.tracking.states import RunState, state_of

DEFAULT_SORTS = (VAL_ACC, TEST_ACC)  # what the table is sorted by when the runs share no objective, in this order
COLUMNS = ["run_id", "name", "status", "overrides", VAL_ACC, TEST_ACC, "epochs", "wall_s"]
DIFF = "what two runs differ in: config keys, fingerprints, final metrics, the epoch their histories part"
SHARED = ("tracking_uri", "format", "command")  # the options of the runs table that diff takes too


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-runs", description=__doc__.splitlines()[0])
    tracking_uri_argument(parser)
    parser.add_argument("--experiment", default="mnist", help="MLflow experiment name (default: mnist)")
    parser.add_argument("--sweep", metavar="PARENT_RUN_ID", help="only the jobs of this sweep's parent run")
    parser.add_argument(
        "--sort",
        metavar="METRIC",
        help=f"metric to sort by (default: the objective the runs share, else {' or '.join(DEFAULT_SORTS)}: the first "
        "that every run with metrics has)",
    )
    parser.add_argument("--ascending", action="store_true", help="smallest first (for losses)")
    parser.add_argument("--top", type=_at_least_one, metavar="N", help="show only the first N runs")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--link", action="store_true", help="print the experiment's page in the MLflow UI instead")
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="with --sweep of an Optuna search: serve its study in Optuna's dashboard on 127.0.0.1 (Ctrl-C stops it)",
    )
    parser.add_argument(
        "--port", type=_port, default=8080, help="the dashboard's port (default: 8080; 0: any free port, printed)"
    )
    parser.add_argument(
        "--group-seeds",
        action="store_true",
        help="one row per configuration apart from seed: n, mean and std of val/test accuracy",
    )
    diff = parser.add_subparsers(dest="command", metavar="[diff RUN_A RUN_B]").add_parser(
        "diff",
        help=DIFF,
        description=DIFF,
    )
    diff.add_argument("run_a", metavar="RUN_A", help="a run id")
    diff.add_argument("run_b", metavar="RUN_B", help="the run id to compare it with")
    # also accepted before `diff`: SUPPRESS leaves the value given there (or the default) in place
    tracking_uri_argument(diff, default=argparse.SUPPRESS)
    diff.add_argument("--format", choices=["table", "json"], default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "diff":  # an option of the table given with diff is named, not ignored
        defaults = vars(parser.parse_args([]))
        extra = [f"--{k.replace('_', '-')}" for k, v in defaults.items() if k not in SHARED and getattr(args, k) != v]
        extra += ["--format csv"] if args.format == "csv" else []
        if extra:
            parser.error(
                f"{' '.join(extra)}: not an option of diff, which takes --tracking-uri and --format table|json"
            )
    return args


def _at_least_one(text: str) -> int:
    """--top N: a whole number of runs, 1 or more (argparse names the option and exits 2 otherwise)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of runs; give 1 or more")
    return int(text)


def _port(text: str) -> int:
    """--port N: a TCP port, 0 to 65535 (0: one the system picks)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give 1 to 65535, or 0 for any free port")
    return int(text)


def search(args: argparse.Namespace) -> list:
    """The runs of --experiment (of --sweep only, if given); UserError when there are none."""
    from mnist_cnn.tracking import store  # MLflow takes seconds to import: only after the arguments are parsed

    client = store.connect(args.tracking_uri, read_only=True)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise UserError(f"no experiment {args.experiment!r} at {redact(args.tracking_uri)}; check --experiment.")
    where = f"tags.mlflow.parentRunId = '{args.sweep}'" if args.sweep else ""
    runs = client.search_runs([experiment.experiment_id], where, max_results=50_000)
    if not runs:
        raise UserError(
            f"no runs in {args.experiment!r}" + (f" under parent run {args.sweep}" if args.sweep else "") + "."
        )
    return runs


def runs_table(args: argparse.Namespace) -> Tuple[pd.DataFrame, str]:
    """One row per run with the COLUMNS above plus the sort metric, sorted; and the line that says
    how. UserError on bad input."""
    runs = search(args)
    sort, ascending, why = (args.sort, args.ascending, "") if args.sort else default_sort(runs)
    ascending = ascending or args.ascending
    table = pd.DataFrame([_row(run, sort) for run in runs])
    if table[sort].isna().all():
        known = ", ".join(sorted({key for run in runs for key in run.data.metrics})) or "none"
        if args.sort:  # asked for by name: a typo, or a metric these runs never log
            raise UserError(f"--sort {args.sort}: no run here has that metric; these do: {known}.")
        # the default, on runs without it (a sweep whose jobs all failed): still show them, unsorted
        print(f"mnist-cnn-runs: no run has the metric {sort!r} (these do: {known}).", file=sys.stderr)
    table = table.sort_values(sort, ascending=ascending, na_position="last")
    header = f"sorted by {sort}, {'smallest' if ascending else 'largest'} first{why}"
    return (table.head(args.top) if args.top else table), header


def default_sort(runs: list) -> Tuple[str, bool, str]:
    """The metric a table of `runs` is sorted by when --sort is not given, whether smallest first,
    and why it: the first objective the runs share, else the first of DEFAULT_SORTS, as long as
    every run that logged metrics has it (a run without a validation split logs no val_acc, and would
    land last whatever its accuracy)."""
    scored = [run for run in runs if run.data.metrics]
    shared = {
        (run.data.params.get("objective.metrics.0"), run.data.params.get("objective.directions.0")) for run in scored
    }
    (metric, direction), *others = shared or {(None, None)}
    if metric is not None and not others and all(metric in run.data.metrics for run in scored):
        return metric, direction == "minimize", " (the objective of every run here)"
    for metric in DEFAULT_SORTS:
        if all(metric in run.data.metrics for run in scored):
            return metric, False, " (a metric every run here logged)"
    return VAL_ACC, False, ""


def seed_table(args: argparse.Namespace) -> pd.DataFrame:
    """One row per configuration of the FINISHED runs, apart from `seed`: named after the settings
    that differ between configurations; n, mean and std of val_acc and test_acc."""
    from mnist_cnn.sweep.tables import seed_groups  # MLflow's entities and pandas

    runs = [r for r in search(args) if state_of(r) is RunState.FINISHED and r.data.params]
    rows = [
        {
            **r.data.params,
            "status": RunState.FINISHED.value,
            **{m: r.data.metrics.get(m, math.nan) for m in SEED_METRICS},
        }
        for r in runs
    ]
    table = pd.DataFrame(rows)
    settings = [c for c in table.columns if c not in ("seed", "status", *SEED_METRICS) and not is_run_setting(c)]
    differing = [c for c in settings if table[c].nunique(dropna=False) > 1]
    return seed_groups(table, differing)


def experiment_link(args: argparse.Namespace) -> str:
    """The experiment's runs in the MLflow UI (the Model-training view), for `make ui` to print."""
    from mnist_cnn.tracking import store  # MLflow: see search

    experiment = store.connect(args.tracking_uri, read_only=True).get_experiment_by_name(args.experiment)
    if experiment is None:
        return f"{ui_base(args.tracking_uri)}  (no experiment {args.experiment!r} yet)"
    return f"experiment {args.experiment!r}: {experiment_url(args.tracking_uri, experiment.experiment_id)}"


def _overrides(tag: str) -> List[str]:
    """The overrides a run started with, from its shell-quoted tag: a value with spaces or quotes
    (`optimizer.betas=[0.9, 0.99]`) comes back whole."""
    try:
        return shlex.split(tag)
    except ValueError:  # a tag that is not shell syntax (unbalanced quotes): its words
        return tag.split()


def _row(run, sort: str) -> dict:
    info, data = run.info, run.data
    wall = (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")
    state = state_of(run)
    return {
        "run_id": info.run_id,
        "name": info.run_name,
        "status": f"PRUNED@{data.tags[PRUNED_AT]}" if state is RunState.PRUNED else state.value,
        "overrides": run_name(_overrides(data.tags.get(names.HYDRA_OVERRIDES, ""))) or "",
        VAL_ACC: data.metrics.get(VAL_ACC, math.nan),
        TEST_ACC: data.metrics.get(TEST_ACC, math.nan),
        "epochs": data.params.get("trainer.epochs"),
        "wall_s": round(wall, 1),
        sort: data.metrics.get(sort, math.nan),
    }


def dashboard(args: argparse.Namespace) -> None:
    """Serve the study of Optuna search --sweep in optuna-dashboard until Ctrl-C, after printing the
    link to its page."""
    if not args.sweep:
        raise ConfigError("--dashboard shows the study of one Optuna search: add --sweep PARENT_RUN_ID.")
    try:
        import optuna_dashboard  # the sweep extra: only --dashboard needs it
    except ImportError as e:
        raise ConfigError("--dashboard needs optuna-dashboard: pip install 'mnist_cnn[sweep]'.") from e
    from mnist_cnn.sweep.study import open_storage  # Optuna: seconds to import, only for --dashboard
    from mnist_cnn.tracking import store  # MLflow, as above
    from mnist_cnn.tracking.lookup import find_run  # MLflow, as above

    parent = find_run(store.connect(args.tracking_uri, read_only=True), args.sweep, "--sweep")
    study, location = parent.data.tags.get(names.OPTUNA_STUDY), parent.data.tags.get(names.OPTUNA_STORAGE)
    if study is None or location is None:
        raise ConfigError(f"--sweep {args.sweep}: not the parent run of an Optuna search (hparams_search=...).")
    if "***" in location:  # the tag keeps no credentials
        raise ConfigError(
            f"--sweep {args.sweep}: its study's storage {location} needs credentials the run does not keep."
        )
    try:
        storage = open_storage(location, create=False)
    except FileNotFoundError as e:
        raise ConfigError(f"--sweep {args.sweep}: its study's journal {location} is not there (moved?).") from e
    try:  # listening before the link is printed: the link works as soon as it is shown
        server = wsgiref.simple_server.make_server("127.0.0.1", args.port, optuna_dashboard.wsgi(storage))
    except OSError as e:
        raise ConfigError(f"--port {args.port}: cannot serve there ({e.strerror}); choose another port.") from e
    # the port it listens on: with --port 0, the one the system picked
    link = f"http://127.0.0.1:{server.server_port}/dashboard/studies/{storage.get_study_id_from_name(study)}"
    print(f"Optuna's dashboard of study {study} ({location}): {link}  (Ctrl-C stops it)", flush=True)
    server.serve_forever()


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.command == "diff":
        return show_diff(run_command("mnist-cnn-runs", lambda: run_diff(args)), args.format)
    if args.dashboard:
        return run_command("mnist-cnn-runs", lambda: dashboard(args))  # Ctrl-C stops its server: exit 130
    if args.link:
        return print(run_command("mnist-cnn-runs", lambda: experiment_link(args)))
    table, header = run_command(
        "mnist-cnn-runs", lambda: (seed_table(args), "") if args.group_seeds else runs_table(args)
    )
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    elif args.format == "json":
        print(table.to_json(orient="records", indent=2))
    else:
        formatters = {"wall_s": "{:.1f}".format} if "wall_s" in table else {}
        if header:
            print(header)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}", formatters=formatters, na_rep="-"))
        if "status" in table:
            _stale_hints(table, args.tracking_uri)


def run_diff(args: argparse.Namespace):
    """What runs RUN_A and RUN_B differ in (a tracking.compare.RunDiff); UserError for an unknown run
    or one without config.yaml."""
    from mnist_cnn.tracking import store  # MLflow: see search
    from mnist_cnn.tracking.compare import diff_runs  # MLflow

    return diff_runs(store.connect(args.tracking_uri, read_only=True), args.run_a, args.run_b)


def show_diff(diff, style: str) -> None:
    """Print a RunDiff as JSON, or as a few tables: the runs, config keys, fingerprints, final
    metrics (headline, timings, system, per class: each group a table), and a line saying where
    the histories part."""
    from mnist_cnn.tracking.compare import METRIC_GROUPS, metric_group, status  # MLflow, loaded by the diff

    if style == "json":
        return print(json.dumps(diff.as_dict(), indent=2))
    for label, run in zip("AB", diff.runs):
        print(f"{label}  {run.info.run_id}  {run.info.run_name}  {status(run)}")
    for title, label, found in (("config keys", "key", diff.config), ("fingerprints", "tag", diff.fingerprints)):
        if found:
            print(f"\n{title} that differ ({len(found)}):")
            print(_pairs(found, label).to_string(index=False))
        else:
            print(f"\n{title}: no difference")
    for group in METRIC_GROUPS:
        found = {key: pair for key, pair in diff.metrics.items() if metric_group(key) == group}
        if found:
            table = _pairs(found, "metric")
            a, b = (pd.to_numeric(pd.Series([pair[i] for pair in found.values()])) for i in (0, 1))
            table["B-A"] = [_cell(value) for value in b - a]
            print(f"\nfinal metrics, {group}:" if group != METRIC_GROUPS[0] else "\nfinal metrics:")
            print(table.to_string(index=False))
    print(f"\n{diff.histories.describe()}")


def _pairs(found: dict, label: str) -> pd.DataFrame:
    """A table of keys with both runs' values, each written as its type says (64, not 64.000)."""
    return pd.DataFrame([(key, _cell(a), _cell(b)) for key, (a, b) in found.items()], columns=[label, "A", "B"])


def _cell(value) -> str:
    """A value as the diff's tables show it: `-` for none, a float to 6 significant digits, anything
    else (an int, a string, a bool, a list) as written."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _stale_hints(table: pd.DataFrame, uri: str) -> None:
    stale = table[table["status"] == RunState.STALE.value]
    if len(stale):
        print(f"\n{len(stale)} STALE run(s): RUNNING, but no process has sent a heartbeat lately. Continue with:")
        for run_id in stale["run_id"]:
            print(f"  {resume_command(run_id, uri)}")


if __name__ == "__main__":
    main()
