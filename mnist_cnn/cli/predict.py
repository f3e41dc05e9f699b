"""`mnist-cnn-predict`: classify pictures of single characters with a model that a run logged.

MODEL is a run id (the model that run logged) or any MLflow model URI: `runs:/<id>/model`,
`models:/NAME/3`, `models:/NAME@champion`, `models:/m-<id>`, or an ONNX file (`FILE.onnx`, from
mnist-cnn-export), which onnxruntime runs without a tracking store. Each FILE (PNG or JPEG, any size,
dark ink on light paper or light ink on dark) is prepared the way MNIST's own digits were (see
mnist_cnn.data.images). Classes are named as in the dataset the model was trained on, read from
the `config.yaml` of the run that logged it; a model without such a run shows class indices.

A file that cannot be read is named on stderr and the others are still predicted; the exit code is
then 2. A MODEL or tracking store that cannot be used is one line on stderr and exit code 2.
"""

import argparse
import json
import sys
from typing import List, Optional, Tuple

from mnist_cnn.config.paths import DEFAULT_TRACKING_URI, TRACKING_URI_ENV, default_tracking_uri
from mnist_cnn.data.datasets import IMAGE_SHAPE
from mnist_cnn.errors import EXIT_BAD_INPUT, EXIT_OK, DataError, ModelError, UserError
from mnist_cnn.model import onnx_file
from mnist_cnn.tracking.redact import redact

TOP = 3  # probabilities shown per file without --json
FIX = (
    "Pass a run id (32 hex digits), runs:/<id>/model, models:/NAME/VERSION or models:/NAME@ALIAS that this store "
    "holds, or the --tracking-uri (or $MLFLOW_TRACKING_URI) of the store that holds the model."
)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="run id, runs:/<id>/model, models:/NAME/VERSION, models:/NAME@ALIAS, or FILE.onnx (mnist-cnn-export)",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=default_tracking_uri(),
        help=f"the MLflow store that holds the model (default: ${TRACKING_URI_ENV}, else {DEFAULT_TRACKING_URI})",
    )
    parser.add_argument("--json", action="store_true", help="a JSON list with every class's probability per file")
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG or JPEG pictures, one character each")
    return parser.parse_args(argv)


def load_model(model: str, tracking_uri: str):
    """The module MODEL names, ready for inference, and its class names; UserError if unusable."""
    if model.endswith(".onnx"):
        return load_onnx(model)
    import mlflow.pytorch  # MLflow and torch take seconds to import: only after the arguments are parsed
    import torch  # as above

    from mnist_cnn.tracking import store  # MLflow
    from mnist_cnn.tracking.lookup import class_names, resolve_model  # MLflow

    try:
        client = store.connect(tracking_uri, read_only=True)  # only reads: a new store would hold no model
        ref = resolve_model(client, model)
        net = mlflow.pytorch.load_model(ref.uri).eval()
        with torch.inference_mode():
            n_classes = net(torch.zeros(1, *IMAGE_SHAPE)).shape[-1]  # also: it takes 28x28 images
    except ModelError as e:  # it names the model; the store's own errors name the store
        raise ModelError(f"--model {e}") from e
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, OSError, ImportError (an s3:// client), unpickling errors
        raise UserError(
            f"--model {model}: cannot load it from the tracking store {tracking_uri} ({store.describe(e)}). {FIX}"
        ) from e
    return net, class_names(client, ref.run_id, n_classes)


def load_onnx(path: str):
    """An ONNX file, run by onnxruntime (no PyTorch module computes), and the class names it holds."""
    onnx_file.require(f"--model {path}", onnx_file.RUN_PACKAGES)
    try:
        net = onnx_file.OnnxModel(path, IMAGE_SHAPE)
    except ModelError as e:
        raise ModelError(f"--model {e}") from e
    return net, net.classes()


def read_images(files: List[str]) -> Tuple[list, list]:
    """The files that could be read and their images; each other file is named on stderr."""
    from mnist_cnn.data.images import load_image  # torch

    read, images = [], []
    for file in files:
        try:
            images.append(load_image(file))
            read.append(file)
        except DataError as e:
            print(f"mnist-cnn-predict: {e}", file=sys.stderr)
    return read, images


def report(files: List[str], probabilities, classes: Tuple[str, ...], as_json: bool) -> None:
    """The predicted class per file: with the top probabilities, or as JSON with all of them."""
    if as_json:
        rows = [
            {
                "file": file,
                "class": classes[int(p.argmax())],
                "probabilities": {name: round(float(v), 6) for name, v in zip(classes, p)},
            }
            for file, p in zip(files, probabilities)
        ]
        print(json.dumps(rows, indent=2))
        return
    for file, p in zip(files, probabilities):
        top = p.topk(min(TOP, len(classes)))
        shown = ", ".join(f"{classes[int(i)]} {float(v):.1%}" for v, i in zip(top.values, top.indices))
        print(f"{file}: {classes[int(top.indices[0])]}  ({shown})")


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        net, classes = load_model(args.model, args.tracking_uri)
    except UserError as e:
        print(f"mnist-cnn-predict: {redact(str(e))}", file=sys.stderr)
        sys.exit(e.exit_code)
    import torch  # loaded already with a PyTorch model; for an ONNX file it only carries the images and logits

    files, images = read_images(args.files)
    if images:
        with torch.inference_mode():
            probabilities = torch.softmax(net(torch.stack(images)), dim=1)
        report(files, probabilities, classes, args.json)
    elif args.json:
        print("[]")
    sys.exit(EXIT_OK if len(files) == len(args.files) else EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
