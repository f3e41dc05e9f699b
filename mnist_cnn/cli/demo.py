"""`mnist-cnn-demo`: try models by hand, on a page where you draw a digit and each model reads it.

In a browser on this machine you draw a character (with a mouse, a finger or a pen), upload a picture
or pick a random test image, and see each model's answer, its probability for every class and the
28x28 image it was given, side by side.

    mnist-cnn-demo [MODEL ...] [--port N] [--tracking-uri URI] [--data-root DIR]

MODEL is what `mnist-cnn-predict --model` takes: a run id, `runs:/ID/model`, `models:/NAME/N`,
`models:/NAME@ALIAS` or an ONNX file; pictures are read by the same code (mnist_cnn.data.images).
Without MODEL, the newest version of the newest registered model is shown, else the model of the
newest finished run. Random test images come from the test split of the first model's dataset,
where its run read it (or under --data-root); never downloaded.

The page is served on 127.0.0.1 only, and fetches nothing from elsewhere. A MODEL that cannot be
found or loaded, or a port already taken, is one line on stderr and exit code 2, before serving;
Ctrl-C stops it (exit code 130). A picture that cannot be read is answered on the page.
"""

import argparse
import errno
from http.server import ThreadingHTTPServer
from typing import Any, List, Optional, Tuple

from mnist_cnn.cli import common
from mnist_cnn.errors import ModelError, UserError
from mnist_cnn.interrupts import Signals
from mnist_cnn.names import MODEL_FORMS
from mnist_cnn.tracking.links import run_url
from mnist_cnn.tracking.redact import redact

PROG = "mnist-cnn-demo"
PORT = 7860  # Gradio's: where people who try models by hand are used to finding the page


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="models to show side by side (default: the newest registered version, else the newest run's model): "
        f"{MODEL_FORMS}, or FILE.onnx",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=PORT,
        help="where to serve the page (default: %(default)s; 0: any free port)",
    )
    common.tracking_uri_argument(parser)
    common.data_root_argument(parser)
    return parser.parse_args(argv)


def port_number(text: str) -> int:
    """--port's value: a TCP port, 0 to 65535 (argparse prints the error with the flag and exits 2)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text}: not a port; give a number from 1 to 65535, or 0 for any free port")
    return int(text)


def load(args: argparse.Namespace) -> Any:
    """The page's models (demo.server.Demo): those the command line names, or the store's newest,
    loaded on the CPU, with the test images of the first one's dataset; ModelError naming a model
    that cannot be found or loaded."""
    from mnist_cnn.demo import server  # torch: only once the arguments are good
    from mnist_cnn.tracking import store  # MLflow, as above
    from mnist_cnn.tracking.lookup import newest_model  # MLflow, as above

    specs, onnx = list(args.models), [m.lower().endswith(".onnx") for m in args.models]
    client = None if specs and all(onnx) else store.connect(args.tracking_uri, read_only=True)  # ONNX: no store
    if not specs:
        found = newest_model(client)
        if found is None:
            raise ModelError(
                f"no MODEL given, and the store {redact(args.tracking_uri)} has no registered model and no finished "
                "run with a model: train one (mnist-cnn-train) or name one (mnist-cnn-demo MODEL)."
            )
        specs, onnx = [found], [False]
    models, trained = [], []
    for spec, is_onnx in zip(specs, onnx):
        if is_onnx:
            net, classes = common.load_onnx(spec)
            models.append(server.Model(spec, net, classes, link=""))
            continue
        found = common.load_model(client, spec)
        run = found.run
        link = run_url(args.tracking_uri, run.info.experiment_id, run.info.run_id) if run is not None else ""
        models.append(server.Model(spec, found.module, found.classes, link))
        trained.append(found)
    return server.Demo(models, test_images(trained, args.data_root))


def test_images(trained: List[common.TrainedModel], data_root: Optional[str]) -> Any:
    """The test split of the first model whose run names its dataset, or the line the page shows
    when asked for a random image without one (demo.server.TestImages)."""
    from mnist_cnn.demo import server  # torch, as in load

    for model in trained:
        if model.config is None:
            continue
        try:
            split = common.test_split(model, data_root)
        except UserError as e:
            return server.TestImages(missing=f"no test images to pick from: {e}")
        return server.TestImages(split.images, split.labels, model.classes)
    return server.TestImages(
        missing="no test images to pick from: no model here was logged by a run that names its dataset."
    )


def start(args: argparse.Namespace) -> Tuple[ThreadingHTTPServer, int]:
    """The page's server, bound but not serving yet, and how many models it shows; UserError when
    the port cannot be had (known first, in a fraction of a second) or a model cannot be used."""
    from mnist_cnn.demo import server  # torch, as in load

    try:
        page = server.DemoServer(args.port)
    except OSError as e:
        taken = "already in use by another program" if e.errno == errno.EADDRINUSE else f"cannot serve there ({e})"
        raise UserError(f"--port {args.port}: {taken}; pick another with --port N (0: any free port).") from e
    try:
        page.demo = load(args)
    except BaseException:
        page.server_close()
        raise
    return page, len(page.demo.models)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    Signals().install()  # SIGTERM, like Ctrl-C, stops the page: exit 130
    page, n_models = common.run_command(PROG, lambda: start(args))
    host, port = page.server_address[:2]
    print(
        f"{PROG}: {n_models} model{'s' if n_models > 1 else ''} at http://{host}:{port}/  (Ctrl-C stops it)", flush=True
    )
    with page:
        common.run_command(PROG, page.serve_forever)


if __name__ == "__main__":
    main()
