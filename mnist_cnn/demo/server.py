"""The page `mnist-cnn-demo` serves on 127.0.0.1: a pad to draw a character on (or a picture to
upload, or a random test image), read by several models side by side.

One HTML page (page.html: no script, style or font from anywhere else, so it works offline) and
three requests, answered by the standard library's threaded HTTP server:

- GET /models: each model's label, class names and the link to its run in the MLflow UI;
- POST /predict, the picture's bytes: the 28x28 image it became, read by the same code as
  `mnist-cnn-predict` (data.images), and each model's probability for every class;
- GET /random: an image of the test set of the first model's dataset, and the same answers.

A picture that cannot be read (blank, several characters, not an image, too large) is answered
400 with the one line the page shows; the server goes on serving.
"""

import base64
import io
import json
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote

import torch

from mnist_cnn.data.images import read_picture, save_image
from mnist_cnn.errors import DataError
from mnist_cnn.names import CONFIDENT

log = logging.getLogger(__name__)

HOST = "127.0.0.1"  # this machine only: the page has no login
MAX_BYTES = 20_000_000  # a phone's photo is a few MB; a larger request is refused before it is read
PAGE = resources.files(__package__).joinpath("page.html").read_bytes()


@dataclass(frozen=True)
class Model:
    """One model on the page."""

    label: str  # how the command line named it (or the default it found)
    net: Callable[[torch.Tensor], torch.Tensor]  # float images (N, 1, 28, 28) in [0, 1] -> logits (N, classes)
    classes: Tuple[str, ...]
    link: str  # its run in the MLflow UI; "" when no run logged it (an ONNX file)


@dataclass(frozen=True)
class TestImages:
    """The test split a random image is drawn from, or why there is none."""

    images: Optional[torch.Tensor] = None  # uint8 (N, 28, 28)
    labels: Optional[torch.Tensor] = None
    classes: Tuple[str, ...] = ()
    missing: str = ""  # the line the page shows when asked for one without them


class Demo:
    """What the page asks of the models: their answers for a picture or a random test image."""

    def __init__(self, models: Sequence[Model], test: TestImages):
        self.models, self.test = tuple(models), test

    def describe(self) -> Dict[str, Any]:
        return {"models": [{"label": m.label, "classes": list(m.classes), "link": m.link} for m in self.models]}

    def predict(self, picture: bytes, name: str) -> Dict[str, Any]:
        """The answers for `picture` (PNG or JPEG bytes); DataError, naming it `name`, if unreadable."""
        start = time.perf_counter()
        image = read_picture(io.BytesIO(picture), name)
        return self._answers(image, start)

    def random(self) -> Dict[str, Any]:
        """The answers for a random test image, with its true class; DataError without test images."""
        start = time.perf_counter()
        if self.test.images is None:
            raise DataError(self.test.missing)
        index = int(torch.randint(len(self.test.images), ()))
        image = self.test.images[index][None].float() / 255
        truth = self.test.classes[int(self.test.labels[index])]
        return {**self._answers(image, start), "index": index, "true": truth}

    def _answers(self, image: torch.Tensor, start: float) -> Dict[str, Any]:
        """`image` (1, 28, 28) as a PNG data URL, each model's answer, and the milliseconds they took."""
        with torch.inference_mode():
            answers = [_answer(m, torch.softmax(m.net(image[None]), dim=1)[0]) for m in self.models]
        return {"input": _data_url(image), "models": answers, "ms": round((time.perf_counter() - start) * 1000, 1)}


def _answer(model: Model, p: torch.Tensor) -> Dict[str, Any]:
    """The class a model names (None when it gave NaN) and its probability for each class."""
    if not bool(p.isfinite().all()):
        return {"class": None, "confident": False, "probabilities": [None] * len(model.classes)}
    return {
        "class": model.classes[int(p.argmax())],
        "confident": float(p.max()) > CONFIDENT,
        "probabilities": [round(float(v), 4) for v in p],
    }


def _data_url(image: torch.Tensor) -> str:
    png = io.BytesIO()
    save_image(image, png)
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


class DemoServer(ThreadingHTTPServer):
    """The page's server: bound to 127.0.0.1 as it is made (OSError if the port cannot be had), so a
    taken port is known before the models load; it answers once `demo` is set."""

    demo: Demo  # daemon threads, as ThreadingHTTPServer's: a request being answered does not hold up Ctrl-C

    def __init__(self, port: int):
        super().__init__((HOST, port), Handler)


class Handler(BaseHTTPRequestHandler):
    """The page's four requests, answered from its server's Demo; any other path is 404."""

    server: DemoServer

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/":
            self._send(HTTPStatus.OK, PAGE, "text/html; charset=utf-8")
        elif self.path == "/models":
            self._json(HTTPStatus.OK, self.server.demo.describe())
        elif self.path == "/random":
            self._answer(self.server.demo.random)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such page here; open /"})

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path != "/predict":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"{self.path}: no such page here; open /"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        name = unquote(self.headers.get("X-Picture-Name", "the picture"))[:100]  # the page quotes a file's name
        if length > MAX_BYTES:
            self.close_connection = True  # its body is never read
            self._json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {
                    "error": f"{name}: {length / 1e6:.0f} MB, more than the {MAX_BYTES // 1_000_000} MB a picture may "
                    "have; send a smaller picture of the character."
                },
            )
            return
        picture = self.rfile.read(length)
        self._answer(lambda: self.server.demo.predict(picture, name))

    def _answer(self, compute: Callable[[], Dict[str, Any]]) -> None:
        """`compute()`'s answers, or the one line that says why there are none; the server lives on."""
        try:
            self._json(HTTPStatus.OK, compute())
        except DataError as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a model that fails on one picture must not end the page
            log.exception("a model failed on a picture")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"a model failed on this picture: {e}"})

    def _json(self, status: HTTPStatus, body: Dict[str, Any]) -> None:
        self._send(status, json.dumps(body, allow_nan=False).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: List[Any]) -> None:  # noqa: A002 - http.server's signature
        """Quiet: the page asks once per stroke, which would fill the terminal."""
