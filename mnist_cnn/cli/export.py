"""`mnist-cnn-export MODEL --onnx FILE`: write a logged or registered model as an ONNX file.

MODEL is named as for mnist-cnn-eval and -predict: a run id, `runs:/ID/model`, `models:/NAME/3` or
`models:/NAME@alias`. The file has a dynamic batch axis and the dataset's class names; it is
checked with onnx.checker, then run in onnxruntime on the first 1,000 images of the test split its
run was trained for, against PyTorch, and the largest logit difference is printed. It takes its
name only after both checks passed (two exports to one file at once each write a temporary file of
its own); Ctrl-C or SIGTERM leaves no file behind (exit 130). `mnist-cnn-predict --model FILE` runs it with onnxruntime.

Only reads the tracking store (opened read-only, as predict does); needs the `export` extra.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from mnist_cnn.cli import common
from mnist_cnn.data.datasets import dataset_info
from mnist_cnn.errors import UserError
from mnist_cnn.interrupts import Signals
from mnist_cnn.model import onnx_file


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mnist-cnn-export", description=__doc__.splitlines()[0])
    common.model_argument(parser)
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write (name ending in .onnx)")
    common.tracking_uri_argument(parser)
    common.data_root_argument(parser)
    return parser.parse_args(argv)


def output_file(name: str) -> Path:
    """--onnx FILE: a name ending in .onnx (how mnist-cnn-predict knows the file) in a folder that exists."""
    path = Path(name).expanduser()
    if path.suffix != ".onnx":
        raise UserError(f"--onnx {name}: give a file name ending in .onnx, as mnist-cnn-predict --model expects.")
    if not path.parent.is_dir():
        raise UserError(f"--onnx {name}: there is no folder {path.parent}; make it first, or choose another file.")
    return path


def export(args: argparse.Namespace):
    """Check the input, load the model and its test images, write and compare the file. Returns the
    model and the export's result."""
    onnx_file.require("--onnx")  # before MLflow and torch load: seconds
    path = output_file(args.onnx)
    Signals().install()  # SIGTERM, like Ctrl-C, ends the export: its temporary file removed, exit 130
    from mnist_cnn.data.splits import batches  # torch
    from mnist_cnn.tracking import store  # MLflow
    from mnist_cnn.tracking.lookup import require_model, resolve_model  # MLflow

    client = store.connect(args.tracking_uri, read_only=True)  # only reads: never creates or migrates a store
    require_model(client, resolve_model(client, args.model), args.model)  # before MLflow's download error
    trained = common.load_model(client, args.model, scored=True)
    images, _ = next(batches(common.test_split(trained, args.data_root), onnx_file.COMPARED))
    classes = dataset_info(trained.data()["name"]).classes
    return trained, onnx_file.export(trained.module, images, path, classes, trained.ref.uri)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    trained, exported = common.run_command(
        "mnist-cnn-export", lambda: export(args), stopped=f"{args.onnx} was not written."
    )
    ref = trained.ref
    note = f" (it trained in {trained.precision} autocast; its weights are fp32)" if trained.precision != "fp32" else ""
    print(
        f"{ref.uri} (run {ref.run_id}) -> {args.onnx}: ONNX opset {exported.opset}, fp32{note}, any batch size; "
        "onnx.checker: valid"
    )
    print(
        f"onnxruntime against PyTorch on {exported.images} {trained.data()['name']} test images: "
        f"max logit difference {exported.max_difference:.1e} (at most {onnx_file.TOLERANCE:.0e}), "
        f"the same class for {exported.same_class} of {exported.images}"
    )


if __name__ == "__main__":
    main()
