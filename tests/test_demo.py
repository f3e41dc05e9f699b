"""mnist-cnn-demo's server and command without a browser: what each request answers, every bad
picture as one line while the server lives on, and the command's refusals before it serves
(tests/test_demo_page.py drives the page in Chromium)."""

import base64
import io
import json
import re
import socket
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image, ImageDraw

from mnist_cnn.cli import demo as demo_cli
from mnist_cnn.demo import server
from mnist_cnn.errors import DataError
from mnist_cnn.names import MODEL_URI
from mnist_cnn.tracking.lookup import newest_model
from tests.helpers.onnx_models import scores_onnx
from tests.helpers.processes import run_main

CLASSES = tuple(str(i) for i in range(10))


def ink_columns(images: torch.Tensor) -> torch.Tensor:
    """A stand-in model: logits that favour the class of the column band the ink's centre falls in."""
    columns = images[:, 0].sum(1)  # (N, 28)
    centre = (columns * torch.arange(28)).sum(1) / columns.sum(1).clamp(min=1e-6)
    return -((torch.arange(10) * 2.8 + 1.4)[None] - centre[:, None]).abs()


def broken(images: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("the model broke")


def png(draw=None, size=(280, 280)) -> bytes:
    picture = Image.new("RGB", size, "white")
    if draw:
        draw(ImageDraw.Draw(picture))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def stroke(x: int):
    return lambda d: d.line([(x, 40), (x, 240)], fill="black", width=18)


@pytest.fixture
def page():
    """A demo server on a free port, serving in a thread: (base URL, its Demo); shut down after."""
    test = server.TestImages(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.tensor([4, 5, 6]), CLASSES)
    test.images[:, 4:24, 14:18] = 255  # a vertical bar, centred in column 16: band 5
    demo = server.Demo(
        [
            server.Model("columns", ink_columns, CLASSES, "http://ui/run"),
            server.Model("again", ink_columns, CLASSES, ""),
        ],
        test,
    )
    httpd = server.DemoServer(0)
    httpd.demo = demo
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)  # quick to shut down
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", demo
    httpd.shutdown()
    httpd.server_close()


def ask(url: str, body: bytes = None, headers: dict = None):
    """(status, JSON body) of a GET, or a POST of `body`."""
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_page_lists_each_model_with_its_classes_and_run_link(page):
    url, _ = page
    with urllib.request.urlopen(url + "/", timeout=30) as reply:
        html = reply.read().decode()
    assert reply.headers["Content-Type"].startswith("text/html") and 'id="pad"' in html
    assert not re.search(r"https?:|//\w|@import|url\(", html)  # no address elsewhere: it works offline
    status, body = ask(url + "/models")
    assert status == 200 and body["models"] == [
        {"label": "columns", "classes": list(CLASSES), "link": "http://ui/run"},
        {"label": "again", "classes": list(CLASSES), "link": ""},
    ]


def test_a_drawn_stroke_is_read_by_every_model_with_the_28x28_input_and_each_probability(page):
    url, _ = page
    status, body = ask(url + "/predict", png(stroke(140)), {"X-Picture-Name": "the drawing"})
    assert status == 200 and [m["class"] for m in body["models"]] == ["5", "5"]  # centred: the middle band
    assert all(len(m["probabilities"]) == 10 and abs(sum(m["probabilities"]) - 1) < 1e-3 for m in body["models"])
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["input"].split(",")[1]))))
    assert seen.shape == (28, 28) and seen[:, 14].max() > 200 and seen[:, :8].max() == 0  # MNIST's white on black
    assert body["ms"] > 0


@pytest.mark.parametrize(
    "picture, name, status, says",
    [
        (png(), "the drawing", 400, "the drawing: the image is blank"),
        (b"not a picture", "notes.txt", 400, "notes.txt: not an image Pillow can read"),
        (png(lambda d: (stroke(60)(d), stroke(500)(d)), (560, 280)), "two.png", 400, "two.png: several characters"),
        (png(stroke(140)), "r%C3%A9sum%C3%A9.png", 200, None),  # the page quotes a file's name
    ],
    ids=["blank", "not-an-image", "two-characters", "quoted-name"],
)
def test_a_picture_that_cannot_be_read_is_one_line_and_the_server_goes_on(page, picture, name, status, says):
    url, _ = page
    code, body = ask(url + "/predict", picture, {"X-Picture-Name": name})
    assert code == status and (says is None or body["error"].startswith(says)), body
    assert ask(url + "/predict", png(stroke(140)))[0] == 200  # still serving


def test_a_picture_over_the_size_limit_is_refused_before_it_is_read(page):
    url, _ = page
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {server.MAX_BYTES + 1}\r\n\r\n".encode())
        reply = b"".join(iter(lambda: s.recv(65536), b"")).decode()  # the server closes the connection
    assert reply.startswith("HTTP/1.0 413") and "more than the 20 MB a picture may have" in reply
    assert ask(url + "/models")[0] == 200


def test_a_random_test_image_comes_with_its_true_class_and_the_answers(page):
    url, _ = page
    status, body = ask(url + "/random")
    assert status == 200 and body["true"] == CLASSES[[4, 5, 6][body["index"]]]
    assert [m["class"] for m in body["models"]] == ["5", "5"]


def test_without_test_images_the_random_button_gets_the_reason(page):
    url, demo = page
    demo.test = server.TestImages(missing="no test images to pick from: because")
    assert ask(url + "/random") == (400, {"error": "no test images to pick from: because"})


def test_a_model_that_fails_on_a_picture_is_one_line_and_the_server_goes_on(page):
    url, demo = page
    demo.models = (server.Model("broken", broken, CLASSES, ""),)
    status, body = ask(url + "/predict", png(stroke(140)))
    assert status == 500 and body == {"error": "a model failed on this picture: the model broke"}
    assert ask(url + "/models")[0] == 200


def test_an_unknown_path_is_404_naming_it(page):
    url, _ = page
    assert ask(url + "/nope") == (404, {"error": "/nope: no such page here; open /"})


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["0" * 32],
            f"mnist-cnn-demo: {'0' * 32}: no run {'0' * 32} in this tracking store; check the id and the tracking URI.",
        ),
        (
            ["missing.onnx"],
            "mnist-cnn-demo: missing.onnx: no such file; give an .onnx file that mnist-cnn-export wrote.",
        ),
        (
            [],
            "mnist-cnn-demo: no MODEL given, and the store {store} has no registered model and no finished run with a "
            "model: train one (mnist-cnn-train) or name one (mnist-cnn-demo MODEL).",
        ),
    ],
    ids=["unknown-run", "missing-onnx-file", "empty-store"],
)
def test_a_model_that_cannot_be_had_is_one_line_and_exit_2_before_serving(
    store_uri, capsys, signals_restored, argv, says
):
    code, out, err = run_main(demo_cli.main, [*argv, "--tracking-uri", store_uri, "--port", "0"], capsys)
    assert (code, out, err) == (2, "", says.format(store=store_uri) + "\n")


def test_a_taken_port_is_one_line_and_exit_2_before_any_model_loads(store_uri, capsys, signals_restored):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_main(demo_cli.main, ["0" * 32, "--tracking-uri", store_uri, "--port", str(port)], capsys)
    assert (code, out) == (2, "") and err == (
        f"mnist-cnn-demo: --port {port}: already in use by another program; pick another with --port N (0: any free "
        "port).\n"
    )  # not the unknown run: the port is checked first


def test_a_port_that_is_not_one_is_refused_by_the_parser(capsys):
    code, _, err = run_main(demo_cli.main, ["--port", "70000"], capsys)
    assert (
        code == 2 and "argument --port: 70000: not a port; give a number from 1 to 65535, or 0 for any free port" in err
    )


def test_the_default_model_is_the_newest_registered_version_else_the_newest_finished_run(store_uri):
    client = MlflowClient(store_uri)
    experiment = client.create_experiment("runs")

    def run_with_model(status: str = "FINISHED") -> str:
        run_id = client.create_run(experiment).info.run_id
        client.set_tag(run_id, MODEL_URI, f"models:/m-{run_id}")
        client.set_terminated(run_id, status)
        return run_id

    assert newest_model(client) is None
    older, newer = run_with_model(), run_with_model()
    run_with_model("FAILED")  # newest, but failed
    client.create_run(experiment)  # running, no model
    assert newest_model(client) == newer != older
    for name, versions in (("first", 3), ("second", 2)):  # "second" is the newest model, its version 2 the newest
        client.create_registered_model(name)
        for _ in range(versions):
            client.create_model_version(name, f"runs:/{older}/model", run_id=older)
    client.create_model_version("first", f"runs:/{older}/model", run_id=older)  # updates "first", which stays older
    assert newest_model(client) == "models:/second/2"


def test_an_onnx_file_is_a_panel_of_its_own_without_a_store_or_a_run_link(tmp_path):
    """An .onnx file (mnist-cnn-export) needs no tracking store: its panel has no run link, its class
    names are the file's, and the random button says why there are no test images."""
    onnx_path = tmp_path / "digits.onnx"
    scores_onnx(onnx_path, [0.3, 0.2, 0.1, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # always a 3, at 93.9%
    args = demo_cli.parse_args([str(onnx_path), "--tracking-uri", f"sqlite:///{tmp_path}/none.db"])
    page = demo_cli.load(args)  # the store does not exist: never opened
    assert [(m.label, m.link, m.classes) for m in page.models] == [(str(onnx_path), "", CLASSES)]
    (answer,) = page.predict(png(stroke(140)), "the drawing")["models"]
    assert answer["class"] == "3" and answer["confident"] and round(answer["probabilities"][3], 3) == 0.939
    with pytest.raises(DataError, match="no test images to pick from: no model here was logged by a run"):
        page.random()
