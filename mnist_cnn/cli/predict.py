"""`mnist-cnn-predict`: classify pictures of single characters with a model that a run logged.

MODEL is a run id (the model that run logged) or any MLflow model URI: `runs:/<id>/model`,
`models:/NAME/3`, `models:/NAME@champion`, `models:/m-<id>`, or an ONNX file (`FILE.onnx`, from
mnist-cnn-export), which onnxruntime runs without a tracking store. Each FILE (PNG or JPEG, any size,
dark ink on light paper or light ink on dark) is prepared the way MNIST's own digits were (see
mnist_cnn.data.images). Classes are named as in the dataset the model was trained on, read from
the `config.yaml` of the run that logged it; a model without such a run shows class indices.

`--show-input DIR` writes the 28x28 image each FILE became, the model's view of it, as
DIR/NAME.png (NAME: the file's name without its extension). A picture that shows no character, or
several, is named on stderr like a file that cannot be read.

Each file's line names the most likely class with the top three probabilities, unless no class is
confident: none has more than half the probability (more than all the others together), as random
noise or a character of no class gets; `--json` gives every probability and `"confident"`.

A file that cannot be read is named on stderr and the others are still predicted; the exit code is
then 2, as when the model gives no usable answer for a file (NaN: its class and probabilities are
null in the JSON). A MODEL or tracking store that cannot be used is one line on stderr and exit
code 2.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

from mnist_cnn.cli import common
from mnist_cnn.errors import EXIT_BAD_INPUT, EXIT_OK, DataError, ModelError, UserError
from mnist_cnn.names import CONFIDENT

TOP = 3  # probabilities shown per file without --json


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-predict", description=__doc__.splitlines()[0])
    common.model_argument(parser, "--model", also="or FILE.onnx (mnist-cnn-export)")
    common.tracking_uri_argument(parser)
    parser.add_argument("--json", action="store_true", help="a JSON list with every class's probability per file")
    parser.add_argument(
        "--show-input",
        metavar="DIR",
        help="write the 28x28 image each FILE became (what the model sees) into DIR, as NAME.png",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG or JPEG pictures, one character each")
    return parser.parse_args(argv)


def load_model(model: str, tracking_uri: str):
    """The module MODEL names, ready for inference, and its class names; UserError if unusable."""
    if model.lower().endswith(".onnx"):  # M.ONNX too: never a run id or model URI
        return common.load_onnx(model, "--model")
    from mnist_cnn.tracking import store  # MLflow takes seconds to import: only after the arguments are parsed

    client = store.connect(tracking_uri, read_only=True)  # only reads: a new store would hold no model
    try:
        trained = common.load_model(client, model)
    except ModelError as e:
        raise ModelError(f"--model {e}") from e
    return trained.module, trained.classes


def input_folder(folder: str) -> Path:
    """--show-input's folder, made if missing; UserError unless a file can be written in it."""
    path = Path(folder)
    if not folder:
        raise UserError("--show-input '': no folder named; give the folder for the 28x28 images.")
    if path.exists() and not path.is_dir():
        raise UserError(f"--show-input {folder}: is a file, not a folder; choose a folder for the 28x28 images.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # permissions, a read-only disk: what writing there would meet
            pass
    except OSError as e:
        raise UserError(
            f"--show-input {folder}: cannot write there ({e.strerror or e}); choose a folder you can write."
        ) from e
    return path


def read_images(files: List[str], show: Optional[Path] = None) -> Tuple[list, list]:
    """The files that could be read and their images, each also written into `show` if given; each
    other file is named on stderr."""
    from mnist_cnn.data.images import load_image, save_image  # torch

    read, images, names = [], [], set()
    for file in files:
        try:
            images.append(load_image(file))
            read.append(file)
        except DataError as e:
            print(f"mnist-cnn-predict: {e}", file=sys.stderr)
            continue
        if show is not None:
            path = show / _unused_name(Path(file).stem, names)
            try:
                save_image(images[-1], path)
            except OSError as e:
                raise UserError(f"--show-input: cannot write {path} ({e.strerror or e}); make room there.") from e
    return read, images


def _unused_name(stem: str, names: set) -> str:
    """`stem`.png, or `stem`-2.png, -3, ... when an earlier file of this call had the same name."""
    name, n = f"{stem}.png", 1
    while name in names:
        n += 1
        name = f"{stem}-{n}.png"
    names.add(name)
    return name


def prepare(args: argparse.Namespace):
    """--show-input's folder, the model and its class names, then the pictures that could be read."""
    show = None if args.show_input is None else input_folder(args.show_input)  # before the model: it takes seconds
    net, classes = load_model(args.model, args.tracking_uri)
    files, images = read_images(args.files, show)
    return show, net, classes, files, images


def report(files: List[str], probabilities, classes: Tuple[str, ...], as_json: bool) -> bool:
    """The predicted class per file: with the top probabilities, or as JSON with all of them (null
    where the model gave NaN). Whether the model gave a usable answer for every file."""
    usable = [bool(p.isfinite().all()) for p in probabilities]
    if as_json:
        rows = [
            {
                "file": file,
                "class": classes[int(p.argmax())] if ok else None,
                "confident": ok and float(p.max()) > CONFIDENT,
                "probabilities": {name: round(float(v), 6) if ok else None for name, v in zip(classes, p)},
            }
            for file, p, ok in zip(files, probabilities, usable)
        ]
        print(json.dumps(rows, indent=2, allow_nan=False))
        return all(usable)
    for file, p, ok in zip(files, probabilities, usable):
        print(f"{file}: {_answer(p, classes) if ok else 'no usable answer (the model gave NaN)'}")
    return all(usable)


def _answer(p, classes: Tuple[str, ...]) -> str:
    """`7  (7 98.1%, 1 1.2%, 9 0.3%)`, or `no class is confident  (...; none above 50%)`."""
    top = p.topk(min(TOP, len(classes)))
    shown = ", ".join(f"{classes[int(i)]} {float(v):.1%}" for v, i in zip(top.values, top.indices))
    if float(top.values[0]) > CONFIDENT:
        return f"{classes[int(top.indices[0])]}  ({shown})"
    return f"no class is confident  ({shown}; none above {CONFIDENT:.0%})"


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    show, net, classes, files, images = common.run_command("mnist-cnn-predict", lambda: prepare(args))
    import torch  # loaded already with a PyTorch model; for an ONNX file it only carries the images and logits

    usable = True
    if images:
        with torch.inference_mode():
            probabilities = torch.softmax(net(torch.stack(images)), dim=1)
        usable = report(files, probabilities, classes, args.json)
    elif args.json:
        print("[]")
    sys.exit(EXIT_OK if usable and len(files) == len(args.files) else EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
