"""No code runs when a model is loaded: mnist-cnn-eval, -predict and -export rebuild a logged model
from its network.json and its state_dict.pt (read weights_only), never from its pickle; a model
that carries only a pickle is refused in one line, and MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
leaves the commands working. mnist-cnn-verify trains a run again and loads no model at all.

What is planted is what anyone who can write to a tracking store's artifacts could put there: a
pickle that writes a marker file when it is loaded."""

import contextlib
import tempfile
from pathlib import Path

import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.file_utils import local_file_uri_to_path
from PIL import Image

from mnist_cnn import names
from mnist_cnn.cli import eval as eval_cli
from mnist_cnn.cli import export, predict, verify
from mnist_cnn.config.checks import check_config
from mnist_cnn.errors import ModelError
from mnist_cnn.runner import train
from mnist_cnn.tracking import model as logged
from tests.helpers.config import make_cfg
from tests.helpers.mlflow_store import only_run
from tests.helpers.processes import run_main

PICKLE = Path("data") / "model.pth"  # where mlflow.pytorch keeps the pickled module in a model's folder
REFUSED = (
    "{spec}: has no network.json and state_dict.pt (logged by another tool or an older mnist_cnn), so it cannot be "
    "loaded without running its pickle, which could run any code; train it again with this version, or, if you "
    "trust everyone who can write to this store, load it with mlflow.pytorch.load_model."
)


class Payload:
    """Pickled, it is the call open(marker, "w"): whoever unpickles it writes the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    torch.save(Payload(marker), path)


@pytest.fixture
def trained(tiny_cfg, store_uri, tmp_path) -> dict:
    """A run of the tiny data with its model registered as tiny (version 1, alias champion): its run
    id, the store's client and the local folder of the model's files."""
    train.run(tiny_cfg("tracking.register_as=tiny"), tmp_path / "out")
    run, client = only_run(store_uri), MlflowClient(store_uri)
    client.set_registered_model_alias("tiny", "champion", "1")
    model_id = run.data.tags[names.MODEL_URI].removeprefix("models:/")
    folder = Path(local_file_uri_to_path(client.get_logged_model(model_id).artifact_location))
    image = tmp_path / "square.png"
    picture = Image.new("L", (28, 28), "black")
    picture.paste(255, (10, 10, 18, 18))  # a white square: the tiny data's kind of picture
    picture.save(image)
    return {"run_id": run.info.run_id, "client": client, "folder": folder, "image": image, "uri": store_uri}


def the_four(trained: dict, tmp_path: Path, capsys) -> dict:
    """Each command on the planted model, each naming it in another of the forms a model is named:
    {command: (exit code, stdout, stderr)}."""
    run_id, uri = trained["run_id"], ["--tracking-uri", trained["uri"]]
    return {
        "eval": run_main(eval_cli.main, [run_id, *uri], capsys),
        "predict": run_main(predict.main, ["--model", "models:/tiny@champion", *uri, str(trained["image"])], capsys),
        "export": run_main(export.main, ["models:/tiny/1", "--onnx", str(tmp_path / "m.onnx"), *uri], capsys),
        "verify": run_main(verify.main, [run_id, *uri], capsys),
    }


def check_the_plant_is_live(folder: Path, marker: Path) -> None:
    """MLflow's own loader runs the planted pickle (so the tests below can fail); the marker goes again."""
    with contextlib.suppress(Exception):  # what it returns is an open file, not a module
        mlflow.pytorch.load_model(str(folder))
    assert marker.exists(), "the planted pickle must write its marker when MLflow loads it"
    marker.unlink()


@pytest.mark.slow
def test_a_pickle_planted_beside_the_rebuild_files_is_never_run(trained, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    plant(trained["folder"] / PICKLE, marker)
    check_the_plant_is_live(trained["folder"], marker)
    results = the_four(trained, tmp_path, capsys)
    assert {name: code for name, (code, _, _) in results.items()} == dict.fromkeys(results, 0), results
    assert not marker.exists()
    assert "test_acc" in results["eval"][1] and (tmp_path / "m.onnx").is_file()
    assert (
        run_main(
            predict.main,
            ["--model", f"runs:/{trained['run_id']}/model", str(trained["image"]), "--tracking-uri", trained["uri"]],
            capsys,
        )[0]
        == 0
    )
    assert not marker.exists()


@pytest.mark.slow
def test_a_model_with_only_its_pickle_is_refused_in_one_line_and_never_run(trained, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    plant(trained["folder"] / PICKLE, marker)
    for name in (names.NETWORK_FILE, names.STATE_DICT_FILE):  # as a model logged by an older version, or by hand
        (trained["folder"] / name).unlink()
    check_the_plant_is_live(trained["folder"], marker)
    results = the_four(trained, tmp_path, capsys)
    refused = {
        "eval": f"mnist-cnn-eval: {REFUSED.format(spec=trained['run_id'])}\n",
        "predict": f"mnist-cnn-predict: --model {REFUSED.format(spec='models:/tiny@champion')}\n",
        "export": f"mnist-cnn-export: {REFUSED.format(spec='models:/tiny/1')}\n",
    }
    for name, err in refused.items():
        assert results[name][0] == 2 and results[name][2] == err, results[name]
    assert results["verify"][0] == 0  # it trains the run again from its config: the model is never read
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()
    evaluated = trained["client"].get_run(trained["run_id"]).data.metrics
    assert "eval_test_acc" not in evaluated  # refused before anything was scored or logged


def test_weights_that_are_not_plain_tensors_are_refused_and_never_run(trained, tmp_path, capsys):
    marker = tmp_path / "pickle-ran"
    plant(trained["folder"] / names.STATE_DICT_FILE, marker)
    image, uri = str(trained["image"]), trained["uri"]
    code, out, err = run_main(predict.main, ["--model", "models:/tiny/1", "--tracking-uri", uri, image], capsys)
    assert code == 2 and out == ""
    assert err == (
        "mnist-cnn-predict: --model models:/tiny/1: its state_dict.pt holds objects other than tensors, which are "
        "refused because loading them could run code; train it again with this version.\n"
    )
    assert not marker.exists()


def test_with_pickle_deserialization_disallowed_eval_predict_and_export_still_work(
    trained, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # what a team's clients should set
    with pytest.raises(MlflowException, match="Deserializing model using pickle is disallowed"):
        mlflow.pytorch.load_model(str(trained["folder"]))  # MLflow's own loader now refuses the pickle
    run_id, uri = trained["run_id"], trained["uri"]
    code, out, err = run_main(eval_cli.main, [f"runs:/{run_id}/model", "--tracking-uri", uri], capsys)
    assert code == 0, err
    metrics = trained["client"].get_run(run_id).data.metrics
    assert metrics["eval_test_acc"] == metrics["test_acc"]  # the rebuilt model is the one that was trained
    code, out, err = run_main(predict.main, ["--model", run_id, "--tracking-uri", uri, str(trained["image"])], capsys)
    assert code == 0 and out.startswith(str(trained["image"])), err
    onnx = tmp_path / "m.onnx"
    code, out, err = run_main(
        export.main, ["models:/tiny@champion", "--onnx", str(onnx), "--tracking-uri", uri], capsys
    )
    assert code == 0 and f"-> {onnx}: ONNX opset" in out and "onnx.checker: valid" in out, err
    assert onnx.is_file()


@pytest.mark.parametrize("model", ["seed_cnn", "bn_cnn", "seed_cnn_flat"])
def test_a_rebuilt_model_gives_the_logits_of_the_model_that_was_logged(store_uri, model):
    """Built again from its network.json and state_dict.pt: the same module, batch norm's running
    statistics and a channels-last layout included."""
    network = check_config(make_cfg([f"model={model}"]))
    trained = network.build().to(memory_format=torch.channels_last).train()
    with torch.no_grad():
        trained(torch.rand(64, *network.in_shape))  # moves batch norm's running statistics off their start
    client = MlflowClient(store_uri)
    run = client.create_run(client.create_experiment("rebuilt"))
    uri = logged.log_model(client, client.get_run(run.info.run_id), trained, network)
    location = client.get_logged_model(uri.removeprefix("models:/")).artifact_location
    with tempfile.TemporaryDirectory() as folder:
        rebuilt = logged.load_model(location, folder, store_uri, uri)
    theirs, ours = trained.state_dict(), rebuilt.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[key], theirs[key]) for key in ours)
    images = torch.rand(5, *network.in_shape)
    trained.eval().to(memory_format=torch.contiguous_format)  # the rebuilt one's layout: the same arithmetic
    assert torch.equal(rebuilt(images), trained(images)) and not rebuilt.training


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{not json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("[1, 2]", "not a JSON object"),
        ('{"layers": [{"type": "exec"}], "in_shape": [1, 28, 28], "num_classes": 10}', "model.layers[0]: unknown type"),
        (
            '{"layers": [], "in_shape": [1, 28, 28], "num_classes": 10, "code": "x"}',
            "unexpected keyword argument 'code'",
        ),
        ('{"layers": [], "in_shape": [-1], "num_classes": 10}', "in_shape [-1] and num_classes 10 must be positive"),
    ],
    ids=["not-json", "not-an-object", "unknown-layer", "unknown-key", "negative-shape"],
)
def test_a_network_json_that_describes_no_network_is_refused_naming_why(tmp_path, text, reason):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / names.NETWORK_FILE).write_text(text)
    torch.save({}, folder / names.STATE_DICT_FILE)
    with pytest.raises(ModelError) as refused:
        logged.load_model(str(folder), str(tmp_path / "download"), "", "MODEL")
    message = str(refused.value)
    assert message.startswith("MODEL: its network.json does not describe a network (") and reason in message
    assert message.endswith("); train it again.")
