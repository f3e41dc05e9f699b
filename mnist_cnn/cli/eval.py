"""`mnist-cnn-eval MODEL`: score a logged or registered model on the test split it was trained for.

MODEL is a run id or an MLflow model URI (`runs:/ID/model`, `models:/NAME/3`, `models:/NAME@alias`).
The dataset comes from the config its run logged; the result (accuracy, the per-class table, the
confusion matrix and the most confident mistakes) is printed and logged back: to the run itself
under `eval/` and as `eval_*` metrics, or, for a model named through the registry, to a new run
tagged with that model URI.
"""

import argparse
from typing import List, Optional

from mnist_cnn import names
from mnist_cnn.cli import common
from mnist_cnn.data.datasets import dataset_info
from mnist_cnn.tracking.states import RunState


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-eval", description=__doc__.splitlines()[0])
    common.model_argument(parser)
    common.tracking_uri_argument(parser)
    common.data_root_argument(parser)
    return parser.parse_args(argv)


def evaluate_model(args: argparse.Namespace):
    """Load the model and its run's test split, score it, log the evaluation. Returns the report, the
    model, and the run the evaluation went to."""
    from mnist_cnn.engine.repro import set_deterministic  # torch
    from mnist_cnn.report.metrics import score  # torch
    from mnist_cnn.tracking import store  # MLflow

    client = store.connect(args.tracking_uri, create=False)
    trained = common.load_model(client, args.model, scored=True)
    data = trained.data()
    set_deterministic(trained.run.data.tags.get(names.DETERMINISTIC) == "True")  # as in training: the same numbers
    split = common.test_split(trained, args.data_root)
    report = score(
        trained.module, split, dataset_info(data["name"]).classes, data["eval_batch_size"], trained.precision
    )
    return report, trained, _log_back(client, trained.ref, report)


def _log_back(client, ref, report) -> str:
    """Log the evaluation to the model's own run, or to a new run for a registered model."""
    from mnist_cnn.report.figures import run_figures  # matplotlib
    from mnist_cnn.tracking.ending import end_run  # MLflow
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
    report, trained, logged = common.run_command(
        "mnist-cnn-eval", lambda: evaluate_model(args), stopped="run the same command again to evaluate."
    )
    ref, logged_acc = trained.ref, trained.run.data.metrics.get(names.TEST_ACC, float("nan"))
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
        f"test_acc {report.accuracy:.4f}  test_loss {report.loss:.4f}  (its training run logged {logged_acc:.4f}; "
        f"this evaluation is logged to run {logged})"
    )


if __name__ == "__main__":
    main()
