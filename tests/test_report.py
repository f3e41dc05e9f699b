"""After training: per-class metrics and figures in every run, a registered model, and
`mnist-cnn-eval` reproducing a run's test accuracy from its run id or registry name."""

import io

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image
from sklearn.metrics import classification_report, confusion_matrix

from mnist_cnn.cli import eval as eval_cli
from mnist_cnn.data.datasets import DATASETS
from mnist_cnn.data.splits import Split
from mnist_cnn.model.network import Network
from mnist_cnn.report import figures
from mnist_cnn.report.metrics import score
from mnist_cnn.runner import train
from mnist_cnn.tracking import model as logged
from mnist_cnn.tracking.tracker import Tracker
from tests.helpers.mlflow_store import all_runs, only_run, runs_by_name


class Echo(torch.nn.Module):
    """Predicts the class written in each image's first pixel, with a confidence in its second."""

    def forward(self, x):
        guess = (x[:, 0, 0, 0] * 255).round().long()
        confidence = x[:, 0, 0, 1] * 10
        return torch.nn.functional.one_hot(guess, 10).float() * confidence[:, None]


def echo_split(guesses, labels):
    images = torch.zeros(len(labels), 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.tensor(guesses, dtype=torch.uint8)
    images[:, 0, 1] = torch.arange(len(labels), dtype=torch.uint8) + 1  # later images are more confident
    return Split(images, torch.tensor(labels))


def test_per_class_metrics_match_scikit_learns_report():
    labels = [0, 0, 1, 1, 1, 2, 2, 3, 9, 9, 5, 5]
    guesses = [0, 1, 1, 1, 2, 2, 2, 3, 9, 0, 5, 6]
    report = score(Echo(), echo_split(guesses, labels), DATASETS["mnist"].classes, batch_size=5)
    expected = classification_report(labels, guesses, labels=range(10), output_dict=True, zero_division=0)
    assert report.accuracy == pytest.approx(expected["accuracy"])
    assert report.confusion.tolist() == confusion_matrix(labels, guesses, labels=range(10)).tolist()
    for k, row in enumerate(report.as_dict()["classes"]):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (expected[str(k)]["precision"], expected[str(k)]["recall"], expected[str(k)]["f1-score"])
        )
        assert row["support"] == expected[str(k)]["support"]
    assert report.class_metrics()["test_acc_class_1"] == pytest.approx(2 / 3)
    # the most confident mistakes first: image 11 (5 -> 6), then 9 (9 -> 0), 4, 1
    assert [(m.true, m.predicted) for m in report.mistakes] == [(5, 6), (9, 0), (1, 2), (0, 1)]


def test_figures_use_the_datasets_class_names():
    classes = DATASETS["fashion_mnist"].classes
    report = score(Echo(), echo_split([7, 5, 5], [7, 7, 5]), classes, batch_size=10)
    matrix = figures.confusion_frame(classes)
    assert "Sneaker" in [t.get_text() for t in matrix.ax.get_xticklabels()]
    mistakes = figures.misclassified(report)
    assert [t.get_text() for t in mistakes.axes[0].texts] == ["Sneaker → Sandal (0.11)"]  # one mosaic
    curves = figures.learning_curves(
        [{"train_loss": 1.0, "val_loss": 0.9, "train_acc": 0.5, "val_acc": 0.6}, {"train_loss": 0.5}]
    )
    assert [line.get_label() for line in curves.axes[0].get_lines()] == ["train", "val"]


def test_a_confusion_matrix_drawn_over_a_used_frame_is_the_figure_drawn_whole_afresh():
    """The blitted PNG shows everything a whole draw does, and nothing of the report drawn before it
    (here a cell the first report fills is empty in the second)."""
    classes = DATASETS["fashion_mnist"].classes
    first = score(Echo(), echo_split([7, 5, 5], [7, 7, 5]), classes, batch_size=10)
    second = score(Echo(), echo_split([1, 2, 3, 3], [1, 3, 3, 2]), classes, batch_size=10)
    used = figures.ConfusionFrame(classes)
    used.png(first)
    blitted = np.asarray(Image.open(io.BytesIO(used.png(second))))
    fresh = figures.ConfusionFrame(classes)
    fresh.show(second)
    fresh.canvas.draw()
    whole = np.asarray(fresh.canvas.buffer_rgba())
    assert blitted.shape == whole.shape == (570, 700, 4)
    assert np.array_equal(blitted, whole)


def eval_cli_run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        eval_cli.main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_a_registered_model_evaluates_to_its_runs_test_accuracy(tiny_cfg, store_uri, tmp_path, capsys):
    train.run(tiny_cfg("tracking.register_as=digits", "tracking.run_name=trained"), tmp_path / "out")
    run = only_run(store_uri)
    client = MlflowClient(store_uri)
    version = client.get_model_version("digits", "1")
    assert version.run_id == run.info.run_id and f"test_acc {run.data.metrics['test_acc']:.4f}" in version.description
    assert version.tags["weights_sha256"] == run.data.tags["weights_sha256"]

    code, out, _ = eval_cli_run([run.info.run_id, "--tracking-uri", store_uri], capsys)
    assert code == 0 and f"test_acc {run.data.metrics['test_acc']:.4f}" in out and "support" in out
    again = client.get_run(run.info.run_id)
    assert again.data.metrics["eval_test_acc"] == run.data.metrics["test_acc"]  # reproduced exactly
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} >= {
        "eval/classification_report.json",
        "eval/plots",
    }

    code, out, _ = eval_cli_run(["models:/digits/1", "--tracking-uri", store_uri], capsys)
    evaluation = runs_by_name(store_uri)["eval digits/1"]
    assert code == 0 and evaluation.data.metrics["test_acc"] == run.data.metrics["test_acc"]
    assert (
        evaluation.data.tags["mnist_cnn.evaluated_model"] == "models:/digits/1" and evaluation.info.status == "FINISHED"
    )


def test_ctrl_c_during_an_evaluation_is_one_line_exit_130_and_no_run_left_running(
    tiny_cfg, store_uri, tmp_path, capsys, monkeypatch
):
    train.run(tiny_cfg("tracking.register_as=digits", "tracking.log_model=true"), tmp_path / "out")
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Tracker, "log_report", interrupted)  # while the evaluation is being logged
    code, _, err = eval_cli_run(["models:/digits/1", "--tracking-uri", store_uri], capsys)
    assert code == 130 and err == "mnist-cnn-eval: stopped by Ctrl-C; run the same command again to evaluate.\n"
    assert runs_by_name(store_uri)["eval digits/1"].info.status == "KILLED"


@pytest.mark.parametrize(
    "model, message",
    [
        (
            "models:/digits/7",
            "models:/digits/7: not in the tracking store {store} (Model Version (name=digits, version=7) not found).",
        ),
        (
            "models:/digits@nope",
            "models:/digits@nope: not in the tracking store {store} (Registered model alias nope not found.).",
        ),
        ("0123456789abcdef0123456789abcdef", "no run 0123456789abcdef0123456789abcdef in this tracking store"),
        ("s3://bucket/model", "s3://bucket/model: no run logged this model, so its dataset is unknown"),
        ("models:/digits", "models:/digits: names the registered model 'digits' but no version; add /VERSION"),
        ("", "'': no model named; give a run id, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS."),
    ],
    ids=["unknown-version", "unknown-alias", "unknown-run", "no-run", "no-version", "empty"],
)
def test_an_unknown_model_is_one_line_and_exit_2(store_uri, model, message, capsys):
    MlflowClient(store_uri).create_registered_model("digits")  # registered, with no version
    code, _, err = eval_cli_run([model, "--tracking-uri", store_uri], capsys)
    assert code == 2 and message.format(store=store_uri) in err and err.count("\n") == 1


def test_a_model_that_does_not_fit_the_data_is_named(tiny_cfg, store_uri, tmp_path, capsys):
    """A model logged in a run of ours but taking other inputs: said so, no evaluation logged."""
    train.run(tiny_cfg("tracking.log_model=false"), tmp_path / "out")
    run_id = only_run(store_uri).info.run_id
    client = MlflowClient(store_uri)
    network = Network.of([{"type": "flatten"}, {"type": "linear", "out_features": 3}], (10,), 3)
    logged.log_model(client, client.get_run(run_id), network.build(), network)
    code, _, err = eval_cli_run([run_id, "--tracking-uri", store_uri], capsys)
    assert code == 2 and "does not take images of shape (N, 1, 28, 28)" in err
    assert "eval_test_acc" not in client.get_run(run_id).data.metrics
    assert client.list_artifacts(run_id, "eval") == [] and len(all_runs(store_uri)) == 1  # no evaluation run either
