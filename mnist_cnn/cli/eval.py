"""`mnist-cnn-eval MODEL`: score a logged or registered model on the test split it was trained for.

MODEL is a run id or an MLflow model URI (`runs:/ID/model`, `models:/NAME/3`, `models:/NAME@alias`).
The dataset comes from the config its run logged; the result (accuracy, the per-class table, the
confusion matrix and the most confident mistakes) is printed and logged back: to the run itself
under `eval/` and as `eval_*` metrics, or, for a model named through the registry, to a new run
tagged with that model URI.
"""

import argparse
import tempfile
from pathlib import Path
from typing import List, Optional

from mnist_cnn import names
from mnist_cnn.cli import run_command
from mnist_cnn.config.paths import default_tracking_uri
from mnist_cnn.data.datasets import IMAGE_SHAPE, dataset_info
from mnist_cnn.errors import DataError, ModelError
from mnist_cnn.tracking.states import RunState


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-eval", description=__doc__.splitlines()[0])
    parser.add_argument(
        "model", metavar="MODEL", help="run id, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS"
    )
    parser.add_argument(
        "--tracking-uri",
        default=default_tracking_uri(),
        help="the MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--data-root", metavar="DIR", help="where the dataset is, if not where the run read it (never downloaded)"
    )
    return parser.parse_args(argv)


def evaluate_model(args: argparse.Namespace):
    """Load the model and its run's test split, score it, log the evaluation. Returns the report, the
    model's reference, the test_acc its run logged when trained, and the run the evaluation went to."""
    from mnist_cnn.engine.repro import set_deterministic  # torch
    from mnist_cnn.report.metrics import score  # torch
    from mnist_cnn.tracking import store  # MLflow

    client = store.connect(args.tracking_uri, create=False)
    ref, run, config, model = trained_model(client, args.model)
    data = config["data"]
    set_deterministic(run.data.tags.get("deterministic") == "True")  # as in training: the same numbers
    split = load_test_split(data, args.data_root)
    report = score(model, split, dataset_info(data["name"]).classes, data["eval_batch_size"], precision(run, config))
    return report, ref, run.data.metrics.get(names.TEST_ACC, float("nan")), _log_back(client, ref, report)


def trained_model(client, spec: str):
    """The model `spec` names (a run id or model URI), loaded on the CPU and checked against its
    dataset, with its reference, the run that trained it and that run's config (a dict)."""
    import mlflow  # MLflow and torch take seconds to import: only after the arguments are parsed

    from mnist_cnn.report.metrics import check_fits  # torch
    from mnist_cnn.tracking.lookup import find_run, resolve_model, run_config  # MLflow

    ref = resolve_model(client, spec)
    if ref.run_id is None:
        raise ModelError(
            f"{spec}: no run logged this model, so its dataset is unknown; give the id of the run that logged it."
        )
    run = find_run(client, ref.run_id, spec)
    with tempfile.TemporaryDirectory() as tmp:
        config = run_config(client, ref.run_id, tmp, spec)
    try:
        model = mlflow.pytorch.load_model(ref.uri, map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for a missing or unreadable model
        raise ModelError(f"{spec}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from e
    check_fits(model, IMAGE_SHAPE, len(dataset_info(config["data"]["name"]).classes), spec)
    return ref, run, config, model


def precision(run, config: dict) -> str:
    """What the run trained in: fp32 or bf16 (autocast; its logged weights are fp32 either way)."""
    return run.data.params.get("trainer.precision") or config["trainer"]["precision"] or "fp32"


def load_test_split(data: dict, data_root: Optional[str]):
    """The test split of the dataset a run's config names (`data`): where the run read it, or under
    `data_root`; never downloaded."""
    from mnist_cnn.data.idx import load_split  # torch

    if data_root and not Path(data_root).expanduser().is_dir():
        raise DataError(f"--data-root {data_root}: no such folder; give the folder that holds {data['name']}'s files.")
    return load_split(data_root or data["root"], data["name"], "test", "never", data["verify_checksums"])


def _log_back(client, ref, report) -> str:
    """Log the evaluation to the model's own run, or to a new run for a registered model."""
    from mnist_cnn.report.figures import run_figures  # matplotlib
    from mnist_cnn.tracking.run import end_run  # MLflow
    from mnist_cnn.tracking.tracker import Tracker  # MLflow

    if ref.registered:
        source = client.get_run(ref.run_id)
        tags = {names.EVALUATED_MODEL: ref.uri, names.SOURCE_RUN: ref.run_id}
        run_id = client.create_run(
            source.info.experiment_id, run_name=f"eval {ref.uri[len('models:/') :]}", tags=tags
        ).info.run_id
        prefix, folder = "", ""
    else:
        run_id, prefix, folder = ref.run_id, "eval_", "eval/"
    tracker = Tracker(client, run_id, client.tracking_uri)
    metrics = {prefix + names.TEST_ACC: report.accuracy, prefix + names.TEST_LOSS: report.loss}
    try:
        tracker.log_metrics({**metrics, **report.class_metrics(f"{prefix}test")}, step=0)
        tracker.log_report(report.as_dict(), run_figures(report), folder=folder)
    except BaseException as e:  # Ctrl-C or a store that went away: the evaluation's own run is not left RUNNING
        if ref.registered:
            end_run(client, run_id, RunState.STOPPED if isinstance(e, KeyboardInterrupt) else RunState.FAILED, {})
        raise
    if ref.registered:
        end_run(client, run_id, RunState.FINISHED, {})
    return run_id


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    report, ref, trained, logged = run_command(
        "mnist-cnn-eval", lambda: evaluate_model(args), stopped="run the same command again to evaluate."
    )
    print(
        f"{ref.uri} (run {ref.run_id}) on the {len(report.confusion.sum(1))}-class test split, "
        f"{int(report.confusion.sum())} images:"
    )
    print(f"{'class':>5}  {'name':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}")
    for row in report.as_dict()["classes"]:
        print(
            f"{row['class']:>5}  {row['name']:<12} {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:7.4f} "
            f"{row['support']:7d}"
        )
    print(
        f"test_acc {report.accuracy:.4f}  test_loss {report.loss:.4f}  (its training run logged {trained:.4f}; "
        f"this evaluation is logged to run {logged})"
    )


if __name__ == "__main__":
    main()
