"""`mnist-cnn-predict`: pictures as users have them (inverted, resized, colour, with margins) come
back as the MNIST digit they show, and the command names each class, each bad file and each
unusable model in one line."""

import json
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from mnist_cnn.cli import predict
from mnist_cnn.data import images as image_files
from mnist_cnn.data.datasets import DATASETS
from mnist_cnn.data.images import load_image
from mnist_cnn.errors import DataError
from mnist_cnn.tracking.lookup import class_names, logged_config, resolve_model
from tests.helpers import processes
from tests.helpers.digits import similarity
from tests.helpers.mlflow_store import free_port


def _on_white_canvas(image: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (120, 80), "white")
    canvas.paste(image.convert("RGB"), (70, 10))  # off-centre, with a wide margin
    return canvas


# How users save a digit: MNIST's white on black, or dark ink on white paper, at other sizes, in colour, 16 bits.
VARIANTS = {
    "as-is": lambda digit: Image.fromarray(digit),
    "dark-on-white": lambda digit: Image.fromarray(255 - digit),
    "64x64": lambda digit: Image.fromarray(255 - digit).resize((64, 64), Image.Resampling.BICUBIC),
    "100x100-rgb": lambda digit: Image.fromarray(digit).resize((100, 100), Image.Resampling.BICUBIC).convert("RGB"),
    "rgb-white-margin": lambda digit: _on_white_canvas(Image.fromarray(255 - digit)),
    "ink-on-transparent": lambda digit: Image.merge(
        "RGBA", [Image.new("L", (28, 28), 0)] * 3 + [Image.fromarray(digit)]
    ),
    "16-bit-grey": lambda digit: Image.fromarray((255 - digit).astype(np.uint16) * 257),
}
RESIZED = {"64x64", "100x100-rgb"}  # resampled twice (by the user, then back to 20x20): close, not equal
COMMAND = str(Path(sys.executable).parent / "mnist-cnn-predict")  # the console script pip installed


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_saved_mnist_digit_comes_back_as_mnist_made_it(mnist_test, tmp_path, variant):
    images, _ = mnist_test
    for i, digit in enumerate(images[:10]):
        path = tmp_path / f"{i}.png"
        VARIANTS[variant](digit).save(path)
        prepared = load_image(path)
        assert prepared.shape == (1, 28, 28) and str(prepared.dtype) == "torch.float32"
        assert 0 <= prepared.min() and prepared.max() <= 1
        pixels = prepared[0].numpy()
        rows, cols = np.nonzero(pixels)
        assert np.ptp(rows) < 20 and np.ptp(cols) < 20, "the ink fits MNIST's 20x20 box"
        centre = [float((np.indices(pixels.shape)[axis] * pixels).sum() / pixels.sum()) for axis in (0, 1)]
        assert centre == pytest.approx([14, 14], abs=0.5), "centred by its centre of mass"
        close = similarity(digit / 255, pixels)
        assert close > (0.85 if variant in RESIZED else 0.99), f"digit {i}: similarity {close:.3f}"


@pytest.mark.parametrize("colour", ["white", "black", "grey-with-faint-noise"])
def test_a_blank_picture_is_refused_naming_the_file(tmp_path, colour):
    path = tmp_path / f"{colour}.png"
    if colour == "grey-with-faint-noise":  # a photo of empty paper: no stroke stands out
        noise = np.random.default_rng(0).integers(120, 140, (50, 40), dtype=np.uint8)
        Image.fromarray(noise).save(path)
    else:
        Image.new("L", (50, 40), colour).save(path)
    with pytest.raises(DataError, match=f"^{path}: the image is blank"):
        load_image(path)


def unreadable(kind: str, folder: Path) -> Path:
    """A path a user might pass that holds no picture to read."""
    path = folder / f"{kind}.png"
    if kind == "folder":
        path.mkdir()
    elif kind == "not-an-image":
        path.write_text("a shopping list, saved as .png")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "fifo":
        os.mkfifo(path)  # opened, it would wait for a writer forever
    elif kind == "link-loop":
        path.symlink_to(path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such file."),
        ("folder", "is a folder; pass image files (PNG or JPEG)."),
        ("not-an-image", "not an image Pillow can read; pass a PNG or JPEG file."),
        ("truncated", "the file is truncated or corrupt."),
        ("fifo", "not a regular file (a FIFO, socket or device); pass an image file (PNG or JPEG)."),
        ("link-loop", "too many levels of symbolic links (a link that leads back to itself)."),
    ],
    ids=["missing", "folder", "not-an-image", "truncated", "fifo", "link-loop"],
)
def test_an_unreadable_file_is_one_message_naming_it(tmp_path, kind, message):
    path = unreadable(kind, tmp_path)
    with pytest.raises(DataError) as error:
        load_image(path)
    assert str(error.value).startswith(f"{path}: ") and str(error.value).endswith(message)


def test_a_picture_larger_than_pillow_reads_says_so(tmp_path, monkeypatch):
    """Pillow refuses images over twice Image.MAX_IMAGE_PIXELS (a decompression bomb); here the limit
    is lowered so that a 60x60 picture is over it."""
    path = tmp_path / "huge.png"
    Image.new("L", (60, 60), 255).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(
        DataError, match=rf"^{path}: larger than Pillow reads \(Image size \(3600 pixels\) exceeds limit"
    ):
        load_image(path)


def test_a_picture_over_the_stated_pixel_count_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """A PNG cannot be decoded shrunk: one of 13000x13000 took 3.9 GB and 12 s. Here one just over
    MAX_PIXELS (25 megapixels) is refused from its header, without a pixel decoded."""
    path = tmp_path / "wide.png"
    Image.new("L", (5001, 5000), 255).save(path, compress_level=1)
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the picture was decoded"))
    with pytest.raises(DataError) as error:
        load_image(path)
    assert str(error.value) == (
        f"{path}: 5001x5000 pixels, more than the 25 megapixels a picture may have; pass a smaller picture of the "
        "character (it is shrunk to 1024 pixels a side anyway)."
    )


def test_a_jpeg_over_the_pixel_count_is_decoded_shrunk_and_read(tmp_path, monkeypatch):
    """A JPEG decodes at 1/2, 1/4 or 1/8 of its size: a phone's 6000x5000 photo is read at 1500x1250."""
    pixels = np.full((5000, 6000), 255, np.uint8)
    pixels[1000:4000, 2800:3200] = 0  # a "1", dark on white
    path = tmp_path / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=80)
    decoded = []
    shrink = image_files._shrunk
    monkeypatch.setattr(image_files, "_shrunk", lambda grey: decoded.append(grey.shape) or shrink(grey))
    prepared = load_image(path)[0].numpy()
    assert decoded == [(1250, 1500)]
    rows, cols = np.nonzero(prepared > 0.5)
    assert np.ptp(rows) >= 18 and np.ptp(cols) <= 6, "a tall thin stroke, 20 pixels high"


def _save_as_users_do(images: np.ndarray, folder: Path) -> list:
    """The first 20 test digits as PNG files, each in one of the VARIANTS in turn."""
    names = list(VARIANTS)
    paths = []
    for i, digit in enumerate(images[:20]):
        paths.append(folder / f"{i:02d}-{names[i % len(names)]}.png")
        VARIANTS[names[i % len(names)]](digit).save(paths[-1])
    return paths


@pytest.mark.slow
def test_the_first_20_test_digits_saved_as_users_do_are_all_right(digits_model, mnist_test, tmp_path, capsys):
    images, labels = mnist_test
    paths = _save_as_users_do(images, tmp_path)
    with pytest.raises(SystemExit) as exit:
        predict.main(["--model", "models:/digits@champion", "--tracking-uri", digits_model["uri"], *map(str, paths)])
    out = capsys.readouterr()
    assert exit.value.code == 0 and out.err == ""
    lines = out.out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(map(str, paths))  # one line per file, in order
    predicted = [int(line.split(": ")[1].split()[0]) for line in lines]
    assert all(line.count("%") == 3 for line in lines), "the top 3 probabilities"
    right = sum(p == label for p, label in zip(predicted, labels[:20]))
    # 20 in fp32 and bf16 alike, each digit's top probability at least 0.52 above the next on 2 EPYC cores
    assert right == 20, list(zip(paths, predicted, labels[:20]))


@pytest.mark.slow
def test_the_command_prints_json_names_a_bad_file_and_exits_2(digits_model, mnist_test, tmp_path):
    images, labels = mnist_test
    paths = _save_as_users_do(images, tmp_path)
    broken = unreadable("truncated", tmp_path)
    files = [str(paths[0]), str(broken), *map(str, paths[1:])]
    command = [COMMAND, "--json", "--model", digits_model["run_id"], "--tracking-uri", digits_model["uri"], *files]
    out = processes.run(command, tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    (error,) = out.stderr.strip().splitlines()
    assert error.startswith(f"mnist-cnn-predict: {broken}: cannot be read (") and error.endswith(
        "truncated or corrupt."
    )
    rows = json.loads(out.stdout)
    assert [row["file"] for row in rows] == list(map(str, paths))  # the bad file left out, the others all there
    for row in rows:
        assert list(row["probabilities"]) == list(DATASETS["mnist"].classes)  # every class, by name
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert row["class"] == max(row["probabilities"], key=row["probabilities"].get)
    assert sum(row["class"] == str(label) for row, label in zip(rows, labels[:20])) == 20


@pytest.mark.slow
def test_a_model_uri_leads_back_to_the_run_that_trained_it(digits_model, tmp_path):
    client, run_id = digits_model["client"], digits_model["run_id"]
    (logged,) = client.search_logged_models([client.get_run(run_id).info.experiment_id])
    uris = [
        f"runs:/{run_id}/model",
        "models:/digits/1",
        "models:/digits@champion",
        "models:/digits/latest",
        logged.model_uri,
    ]
    for uri in uris:
        assert resolve_model(client, uri).run_id == run_id, uri
    folder = mlflow.artifacts.download_artifacts(logged.artifact_location, dst_path=str(tmp_path))  # no run's model
    assert resolve_model(client, folder).run_id is None
    client.create_registered_model("from-a-folder")
    client.create_model_version("from-a-folder", folder)
    assert resolve_model(client, "models:/from-a-folder/1").run_id is None


def test_class_names_come_from_the_dataset_the_run_trained_on(store_uri):
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("names")
    fashion, no_config = client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id
    client.log_text(fashion, "data:\n  name: fashion_mnist\n", "config.yaml")
    names = class_names(logged_config(client, fashion), 10)
    assert names == DATASETS["fashion_mnist"].classes and names[9] == "Ankle boot"
    indices = tuple("0123456789")
    assert logged_config(client, no_config) is None  # not a run mnist-cnn-train made
    assert class_names(None, 10) == indices  # no run (or no config) at all
    assert class_names(logged_config(client, fashion), 12) == tuple(map(str, range(12)))  # a model with other outputs


UNKNOWN_RUN = "0" * 32


@pytest.mark.parametrize(
    "model, uri, message",
    [
        (
            UNKNOWN_RUN,
            "{store}",
            f"--model {UNKNOWN_RUN}: no run {UNKNOWN_RUN} in this tracking store; check the id and the tracking URI.",
        ),
        (
            "models:/nosuch/1",
            "{store}",
            "--model models:/nosuch/1: not in the tracking store {store} (Model Version (name=nosuch, version=1) not "
            "found).",
        ),
        (
            "models:/digits@nope",
            "{store}",
            "--model models:/digits@nope: not in the tracking store {store} (Registered model alias nope not found.).",
        ),
        (
            "models:/digits",
            "{store}",
            "--model models:/digits: names the registered model 'digits' but no version; add /VERSION "
            "(models:/digits/1), /latest or @ALIAS.",
        ),
        (
            "",
            "{store}",
            "--model '': no model named; give a run id, runs:/ID/model, models:/NAME/VERSION or models:/NAME@ALIAS.",
        ),
        (
            UNKNOWN_RUN,
            "sqlite:///{tmp}/nothere.db",
            "tracking.uri='sqlite:///{tmp}/nothere.db': there is no MLflow store at {tmp}/nothere.db.",
        ),
        (
            UNKNOWN_RUN,
            "http://alice:secret@127.0.0.1:{port}",
            "tracking.uri='http://127.0.0.1:{port}': cannot open the MLflow store (connection refused).",
        ),
    ],
    ids=[
        "unknown-run",
        "unknown-registered-model",
        "unknown-alias",
        "no-version",
        "empty",
        "no-store-file",
        "unreachable-server",
    ],
)
def test_an_unusable_model_or_store_is_one_line_exit_2(store_uri, tmp_path, capsys, monkeypatch, model, uri, message):
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # restored after the test: the credentials
        monkeypatch.setenv(key, "")  # in the URI move into these variables, which other tests must not inherit
    names = {"store": store_uri, "tmp": tmp_path, "port": free_port()}
    MlflowClient(store_uri).create_registered_model("digits")  # a name with no alias "nope"
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), "black").save(image)
    with pytest.raises(SystemExit) as exit:
        predict.main(["--model", model, "--tracking-uri", uri.format(**names), str(image)])
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert err.startswith("mnist-cnn-predict: " + message.format(**names)) and err.count("\n") == 1, err
    assert "secret" not in err and "Traceback" not in err
    assert not (tmp_path / "nothere.db").exists()  # no empty store left behind
