"""ONNX: `mnist-cnn-export` writes a model as an ONNX file that matches PyTorch, `tracking.log_onnx`
logs one with the run, `mnist-cnn-predict --model FILE.onnx` runs it in onnxruntime alone, and each
missing package or unusable file is one line naming the fix."""

import errno
import hashlib
import json
import re
import signal
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from mnist_cnn.cli import export, predict
from mnist_cnn.config.checks import check_config
from mnist_cnn.data.datasets import IMAGE_SHAPE
from mnist_cnn.data.idx import load_split
from mnist_cnn.errors import ConfigError
from mnist_cnn.model import onnx_file
from mnist_cnn.runner import train
from tests.helpers.mlflow_store import only_run
from tests.helpers.onnx_models import scores_onnx
from tests.helpers.processes import run_main

INSTALL = "pip install 'mnist_cnn[export]'"


@pytest.mark.parametrize("package", onnx_file.EXPORT_PACKAGES)
def test_export_without_the_export_extra_says_which_extra_to_install_and_exits_2(
    store_uri, tmp_path, monkeypatch, capsys, package
):
    monkeypatch.setitem(sys.modules, package, None)  # `import onnx` fails as where it is not installed
    target = tmp_path / "m.onnx"
    code, out, err = run_main(export.main, ["0" * 32, "--onnx", str(target), "--tracking-uri", store_uri], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"mnist-cnn-export: --onnx needs onnx, onnxscript and onnxruntime, which is not installed ({package}); "
        f"install them with: {INSTALL}\n"
    )
    assert not target.exists()


def test_predict_an_onnx_file_without_onnxruntime_says_which_extra_to_install_and_exits_2(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), "black").save(image)
    code, out, err = run_main(predict.main, ["--model", "m.onnx", str(image)], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"mnist-cnn-predict: --model m.onnx needs onnxruntime, which is not installed (onnxruntime); install it "
        f"with: {INSTALL}\n"
    )


def test_log_onnx_without_the_export_extra_or_without_the_model_is_refused_before_training(tiny_cfg, monkeypatch):
    with pytest.raises(ConfigError, match=r"^tracking.log_onnx logs the model as ONNX too; drop tracking.log_model"):
        check_config(tiny_cfg("tracking.log_onnx=true", "tracking.log_model=false"))
    check_config(tiny_cfg("tracking.log_onnx=true"))  # installed here: accepted
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ConfigError) as error:
        check_config(tiny_cfg("tracking.log_onnx=true"))
    assert str(error.value) == (
        "tracking.log_onnx=true needs onnx, onnxscript and onnxruntime, which is not installed (onnxscript); "
        f"install them with: {INSTALL}"
    )


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "model.bin",
            "--onnx {tmp}/model.bin: give a file name ending in .onnx, as mnist-cnn-predict --model expects.",
        ),
        (
            "no/such/folder/m.onnx",
            "--onnx {tmp}/no/such/folder/m.onnx: there is no folder {tmp}/no/such/folder; make it first, or choose "
            "another file.",
        ),
    ],
    ids=["not-onnx", "no-folder"],
)
def test_an_output_file_export_cannot_write_is_one_line_exit_2(store_uri, tmp_path, capsys, name, message):
    argv = ["0" * 32, "--onnx", str(tmp_path / name), "--tracking-uri", store_uri]
    code, out, err = run_main(export.main, argv, capsys)
    assert code == 2 and out == "" and err == f"mnist-cnn-export: {message.format(tmp=tmp_path)}\n"
    assert list(tmp_path.iterdir()) == [Path(store_uri.removeprefix("sqlite:///"))]  # nothing made


@pytest.mark.parametrize(
    "model, uri, message",
    [
        (
            "0" * 32,
            "{store}",
            f"{'0' * 32}: no run {'0' * 32} in this tracking store; check the id and the tracking URI.",
        ),
        (
            "models:/digits/7",
            "{store}",
            "models:/digits/7: not in the tracking store {store} (Model Version (name=digits, version=7) not found).",
        ),
        ("0" * 32, "sqlite:///{tmp}/nothere.db", "tracking.uri='sqlite:///{tmp}/nothere.db': there is no MLflow store"),
    ],
    ids=["unknown-run", "unknown-version", "no-store-file"],
)
def test_export_of_an_unknown_model_or_store_is_one_line_exit_2_and_writes_nothing(
    store_uri, tmp_path, capsys, model, uri, message
):
    MlflowClient(store_uri).create_registered_model("digits")  # registered, with no version
    before, uri = _sha256(store_uri), uri.format(store=store_uri, tmp=tmp_path)
    code, out, err = run_main(export.main, [model, "--onnx", str(tmp_path / "m.onnx"), "--tracking-uri", uri], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"mnist-cnn-export: {message.format(store=store_uri, tmp=tmp_path)}"), err
    assert _sha256(store_uri) == before and not (tmp_path / "nothere.db").exists()
    assert not list(tmp_path.glob("m.onnx*"))


def _other_input_onnx(path: Path) -> None:
    """A valid ONNX model that takes 3x32x32 colour images."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 32, 32])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3, 32, 32])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "colour", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", r"--model {path}: no such file; give an \.onnx file that mnist-cnn-export wrote\.$"),
        ("not-onnx", r"--model {path}: onnxruntime cannot load it \(.+\); give an ONNX model file\.$"),
        ("other-input", r"--model {path}: does not take float images of shape \(N, 1, 28, 28\) \(.*dimensions.*\)\.$"),
    ],
    ids=["missing", "not-onnx", "other-input"],
)
def test_predict_names_an_onnx_file_it_cannot_use_in_one_line_exit_2(tmp_path, capsys, kind, message):
    path = tmp_path / f"{kind}.onnx"
    if kind == "not-onnx":
        path.write_text("a shopping list, saved as .onnx")
    elif kind == "other-input":
        _other_input_onnx(path)
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), "black").save(image)
    code, out, err = run_main(predict.main, ["--model", str(path), str(image)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert re.match("mnist-cnn-predict: " + message.format(path=re.escape(str(path))), err), err


def _pictures(folder: Path, count: int) -> list:
    """`count` pictures of a "1": a white bar on black, as MNIST draws it."""
    paths = []
    for i in range(count):
        pixels = np.zeros((28, 28), np.uint8)
        pixels[6:22, 13 + i % 2 : 15 + i % 2] = 255
        paths.append(folder / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


CONFIDENT_3 = [0.3, 0.2, 0.1, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # class 3 at 93.9%, then 0 and 1


def test_predict_takes_an_onnx_file_whatever_the_case_of_its_suffix(tmp_path, capsys):
    path = tmp_path / "DIGITS.ONNX"
    scores_onnx(path, CONFIDENT_3)
    (picture,) = _pictures(tmp_path, 1)
    code, out, err = run_main(predict.main, ["--model", str(path), str(picture)], capsys)
    assert (code, err) == (0, "") and out == f"{picture}: 3  (3 93.9%, 0 0.9%, 1 0.8%)\n"


@pytest.mark.parametrize("output", ["rows", "squeezed"])
def test_predict_gives_an_onnx_file_with_a_fixed_batch_of_1_one_picture_at_a_time(tmp_path, capsys, output):
    path = tmp_path / "one.onnx"
    scores_onnx(path, CONFIDENT_3, batch=1, output=output)
    pictures = _pictures(tmp_path, 3)
    code, out, err = run_main(predict.main, ["--model", str(path), *map(str, pictures)], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"{picture}: 3  (3 93.9%, 0 0.9%, 1 0.8%)" for picture in pictures]


def test_an_onnx_file_that_gives_one_number_per_image_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "sum.onnx"
    scores_onnx(path, CONFIDENT_3, output="sum")
    code, out, err = run_main(predict.main, ["--model", str(path), str(_pictures(tmp_path, 1)[0])], capsys)
    assert code == 2 and out == ""
    assert err == (
        f"mnist-cnn-predict: --model {path}: gives an output of shape (2,) for 2 image(s); predict needs "
        "(N, classes): a row of class scores (logits) per image, for two classes or more.\n"
    )


def _strict_json(text: str):
    """JSON as the standard has it: NaN and Infinity are no JSON."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))


def test_nan_logits_are_no_usable_answer_exit_2_and_null_in_valid_json(tmp_path, capsys):
    path = tmp_path / "nan.onnx"
    scores_onnx(path, [float("nan")] + CONFIDENT_3[1:])
    (picture,) = _pictures(tmp_path, 1)
    code, out, err = run_main(predict.main, ["--model", str(path), str(picture)], capsys)
    assert (code, out, err) == (2, f"{picture}: no usable answer (the model gave NaN)\n", "")
    code, out, err = run_main(predict.main, ["--json", "--model", str(path), str(picture)], capsys)
    (row,) = _strict_json(out)
    assert code == 2 and row["class"] is None and row["confident"] is False
    assert list(row["probabilities"].values()) == [None] * 10


def test_a_picture_no_class_is_confident_about_says_so(tmp_path, capsys):
    """The rule: a class is named when the model gives it more than half of the probability."""
    path = tmp_path / "unsure.onnx"
    scores_onnx(path, [0.3, 0.2, 0.1, 1.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0])  # 3 at 19.6%, 4 at 17.8%
    (picture,) = _pictures(tmp_path, 1)
    code, out, err = run_main(predict.main, ["--model", str(path), str(picture)], capsys)
    assert (code, err) == (0, "")
    assert out == f"{picture}: no class is confident  (3 19.6%, 4 17.8%, 0 9.7%; none above 50%)\n"
    code, out, err = run_main(predict.main, ["--json", "--model", str(path), str(picture)], capsys)
    (row,) = _strict_json(out)
    assert (row["class"], row["confident"]) == ("3", False)


def _sha256(uri: str) -> str:
    return hashlib.sha256(Path(uri.removeprefix("sqlite:///")).read_bytes()).hexdigest()


@pytest.mark.slow
def test_export_writes_a_checked_fp32_file_with_any_batch_size_that_predict_runs_without_pytorch(
    tiny_cfg, tiny_root, store_uri, tmp_path, capsys, monkeypatch
):
    train.run(tiny_cfg("tracking.log_model=true", "trainer.precision=bf16"), tmp_path / "out")
    capsys.readouterr()  # training's own lines
    run_id = only_run(store_uri).info.run_id
    before, target = _sha256(store_uri), tmp_path / "tiny.onnx"
    code, out, err = run_main(export.main, [run_id, "--onnx", str(target), "--tracking-uri", store_uri], capsys)
    assert code == 0, err
    first, second = out.splitlines()
    assert first.startswith(f"runs:/{run_id}/model (run {run_id}) -> {target}: ONNX opset ")
    assert first.endswith(
        "fp32 (it trained in bf16 autocast; its weights are fp32), any batch size; onnx.checker: valid"
    )
    difference = float(re.search(r"max logit difference (\S+) \(at most 1e-04\)", second).group(1))
    assert second.startswith("onnxruntime against PyTorch on 200 mnist test images") and difference <= 1e-4
    assert _sha256(store_uri) == before, "export only reads the store"
    assert sorted(p.name for p in tmp_path.glob("tiny.onnx*")) == ["tiny.onnx"]  # no temporary file left

    onnx.checker.check_model(str(target), full_check=True)
    (batch, *shape) = onnx.load(str(target)).graph.input[0].type.tensor_type.shape.dim
    assert batch.dim_param and [d.dim_value for d in shape] == list(IMAGE_SHAPE)
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model").eval()
    runtime = onnx_file.OnnxModel(target, IMAGE_SHAPE)
    assert runtime.classes() == tuple("0123456789")  # from the file's metadata
    images = load_split(str(tiny_root), "mnist", "test", verify=False).images[:7].unsqueeze(1).float() / 255
    for n in (1, 3, 7):
        with torch.inference_mode():
            expected = model(images[:n])
        assert torch.allclose(runtime(images[:n]), expected, atol=1e-4), f"batch of {n}"

    pictures = []
    for i, image in enumerate(images[:5]):
        pictures.append(tmp_path / f"{i}.png")
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(pictures[-1])

    def no_pytorch(*args, **kwargs):
        raise AssertionError("a PyTorch module computed")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_pytorch)
    gone = f"sqlite:///{tmp_path}/no-store.db"  # an ONNX file needs no tracking store
    code, out, err = run_main(
        predict.main, ["--model", str(target), "--tracking-uri", gone, "--json", *map(str, pictures)], capsys
    )
    assert code == 0, err
    assert [row["file"] for row in json.loads(out)] == list(map(str, pictures))


@pytest.mark.slow
def test_an_export_that_differs_from_pytorch_is_refused_and_leaves_no_file(tiny_cfg, store_uri, tmp_path, monkeypatch):
    train.run(tiny_cfg("tracking.log_model=true"), tmp_path / "out")
    monkeypatch.setattr(onnx_file, "TOLERANCE", -1.0)  # every difference is too large
    target = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError, match=rf"away from PyTorch's on 200 test images .*; {target} was not written"):
        export.main([only_run(store_uri).info.run_id, "--onnx", str(target), "--tracking-uri", store_uri])
    assert list(tmp_path.glob("m.onnx*")) == []


@pytest.mark.slow
def test_a_disk_that_fills_up_while_the_file_is_written_is_one_line_exit_2_and_leaves_no_file(
    tiny_cfg, store_uri, tmp_path, monkeypatch, capsys
):
    train.run(tiny_cfg("tracking.log_model=true"), tmp_path / "out")
    capsys.readouterr()

    def half_then_full(path: Path, data: bytes) -> None:
        path.write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_file, "_write", half_then_full)
    target = tmp_path / "m.onnx"
    argv = [only_run(store_uri).info.run_id, "--onnx", str(target), "--tracking-uri", store_uri]
    code, out, err = run_main(export.main, argv, capsys)
    assert code == 2 and out == ""
    assert (
        err == f"mnist-cnn-export: cannot write {target}: no space left on device; choose another file or make room.\n"
    )
    assert list(tmp_path.glob("m.onnx*")) == []


@pytest.mark.slow
def test_log_onnx_logs_model_onnx_with_the_run_matching_its_logged_model(tiny_cfg, tiny_root, store_uri, tmp_path):
    train.run(tiny_cfg("tracking.log_model=true", "tracking.log_onnx=true"), tmp_path / "out")
    run_id = only_run(store_uri).info.run_id
    path = MlflowClient(store_uri).download_artifacts(run_id, "model.onnx", str(tmp_path))
    runtime = onnx_file.OnnxModel(Path(path), IMAGE_SHAPE)
    assert runtime.metadata[onnx_file.SOURCE] == f"runs:/{run_id}/model"
    images = load_split(str(tiny_root), "mnist", "test", verify=False).images.unsqueeze(1).float() / 255
    with torch.inference_mode():
        expected = mlflow.pytorch.load_model(f"runs:/{run_id}/model").eval()(images)
    assert (runtime(images) - expected).abs().max() <= 1e-4


@pytest.mark.slow
def test_predict_with_the_exported_file_gives_the_pytorch_models_classes_on_clean_test_digits(
    digits_model, real_root, tmp_path, capsys
):
    """Done when: the export prints its difference, and predict gives the same classes through
    onnxruntime as through the PyTorch model, on the first 100 MNIST test digits saved as they are."""
    target = tmp_path / "digits.onnx"
    argv = ["models:/digits@champion", "--onnx", str(target), "--tracking-uri", digits_model["uri"]]
    code, out, err = run_main(export.main, argv, capsys)
    assert code == 0, err
    printed = re.search(
        r"on 1000 mnist test images: max logit difference (\S+) \(at most 1e-04\), the same class for (\d+)", out
    )
    assert float(printed[1]) <= 1e-4 and printed[2] == "1000", out
    images = load_split(str(real_root), "mnist", "test").images[:100].numpy()
    pictures = []
    for i, digit in enumerate(images):
        pictures.append(str(tmp_path / f"{i:03d}.png"))
        Image.fromarray(digit).save(pictures[-1])
    answers = {}
    for model in (digits_model["run_id"], str(target)):
        _, out, _ = run_main(
            predict.main, ["--model", model, "--tracking-uri", digits_model["uri"], "--json", *pictures], capsys
        )
        answers[model] = json.loads(out)
    by_pytorch, by_onnx = answers.values()
    assert len(by_onnx) >= 80  # the digits predict takes for one character each (all but a few)
    assert [(r["file"], r["class"]) for r in by_onnx] == [(r["file"], r["class"]) for r in by_pytorch]
    for a, b in zip(by_onnx, by_pytorch):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_export_of_a_sweeps_parent_or_of_a_run_without_a_model_says_so_exit_2(store_uri, tmp_path, capsys):
    """Not MLflow's download error: a sweep's parent names what to give instead; a run that logged no
    model (FINISHED with tracking.log_model=false: no model_uri tag, or stopped before its end: KILLED)
    says so."""
    client = MlflowClient(store_uri)
    parent = client.create_run("0", tags={"sweep_argv": "[]"}).info.run_id
    killed, unlogged = client.create_run("0").info.run_id, client.create_run("0").info.run_id
    client.set_terminated(killed, "KILLED")
    client.set_terminated(unlogged, "FINISHED")
    no_model = (
        "this run logged no model (it was stopped before its end, or trained with tracking.log_model=false); give a "
        "FINISHED run that logged one."
    )
    for run_id, message in [
        (
            parent,
            f"{parent}: run {parent} is a sweep's parent run, which trains no model itself; give the id of one of its "
            f"jobs (its child runs: mnist-cnn-runs --sweep {parent}).",
        ),
        (killed, f"{killed}: {no_model}"),
        (unlogged, f"{unlogged}: {no_model}"),
    ]:
        argv = [run_id, "--onnx", str(tmp_path / "m.onnx"), "--tracking-uri", store_uri]
        code, out, err = run_main(export.main, argv, capsys)
        assert (code, out, err) == (2, "", f"mnist-cnn-export: {message}\n")
    assert not list(tmp_path.glob("m.onnx*"))


@pytest.mark.slow
@pytest.mark.usefixtures("signals_restored")
def test_sigterm_during_an_export_exits_130_and_two_exports_never_share_a_temporary_file(
    tiny_cfg, store_uri, tmp_path, monkeypatch, capsys
):
    train.run(tiny_cfg("tracking.log_model=true"), tmp_path / "out")
    capsys.readouterr()
    target, written = tmp_path / "m.onnx", []
    real_write = onnx_file._write

    def write_then(path: Path, data: bytes, then=None) -> None:
        written.append(path)
        real_write(path, data)
        if then:
            signal.raise_signal(then)  # as `kill -TERM` would, while the file is half done

    argv = [only_run(store_uri).info.run_id, "--onnx", str(target), "--tracking-uri", store_uri]
    monkeypatch.setattr(onnx_file, "_write", write_then)
    for _ in range(2):
        assert run_main(export.main, argv, capsys)[0] == 0
    assert written[0] != written[1] and {p.parent for p in written} == {tmp_path}  # each its own, beside the file
    target.unlink()
    monkeypatch.setattr(onnx_file, "_write", lambda path, data: write_then(path, data, signal.SIGTERM))
    code, out, err = run_main(export.main, argv, capsys)
    assert (code, out, err) == (130, "", f"mnist-cnn-export: stopped by SIGTERM; {target} was not written.\n")
    assert list(tmp_path.glob("m.onnx*")) == []
