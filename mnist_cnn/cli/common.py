"""What the console commands share: their common arguments (`--tracking-uri`, `--data-root` and
its one check), one loader of a trained model (eval, predict, export, demo) and one of an ONNX file
(predict, demo), and one way to end on bad input or Ctrl-C (all seven commands).

Nothing heavy is imported at the top: a command parses its arguments, and refuses bad ones, in a
fraction of a second; torch and MLflow load inside the functions that need them.
"""

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from mnist_cnn.config.paths import DEFAULT_TRACKING_URI, TRACKING_URI_ENV, default_tracking_uri
from mnist_cnn.data.datasets import IMAGE_SHAPE, dataset_info
from mnist_cnn.errors import EXIT_INTERRUPTED, DataError, ModelError, UserError
from mnist_cnn.model import onnx_file
from mnist_cnn.names import MODEL_FORMS
from mnist_cnn.tracking.redact import redact


def run_command(prog: str, command: Callable[[], Any], stopped: str = "") -> Any:
    """`command()`, as a console command runs it: a UserError becomes one line on stderr, `PROG:
    message` with credentials masked, and its exit code; Ctrl-C (and SIGTERM, where the command
    routes it here: interrupts.Signals) exits 130, after `stopped` (what it left undone) when given."""
    try:
        return command()
    except UserError as e:
        print(f"{prog}: {redact(str(e))}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        if stopped:
            print(f"{prog}: stopped by {_signal_named(e)}; {stopped}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _signal_named(stop: KeyboardInterrupt) -> str:
    """Which signal stopped the command: Python's own Ctrl-C carries no name, interrupts.Signals
    raises with the signal's, and a stop asked for earlier (at the next step) with neither."""
    named = {"": "Ctrl-C", "SIGINT": "Ctrl-C", "SIGTERM": "SIGTERM"}
    return named.get(str(stop), "Ctrl-C or SIGTERM")


def tracking_uri_argument(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """--tracking-uri URI: the store that holds the runs and models (default: $MLFLOW_TRACKING_URI,
    else ./mlflow.db)."""
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=default_tracking_uri() if default is None else default,
        help=f"the MLflow store (default: ${TRACKING_URI_ENV}, else {DEFAULT_TRACKING_URI})",
    )


def data_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root", metavar="DIR", help="where the dataset is, if not where the run read it (never downloaded)"
    )


def model_argument(parser: argparse.ArgumentParser, flag: str = "", also: str = "") -> None:
    """MODEL, as a positional argument or as the option `flag` (predict's --model); `also`: the other
    forms the command takes."""
    names, extra = ([flag], {"required": True}) if flag else (["model"], {"metavar": "MODEL"})
    parser.add_argument(*names, help=MODEL_FORMS + (f", {also}" if also else ""), **extra)


def data_root(given: Optional[str], data: dict, run_id: str) -> str:
    """The folder that holds a run's dataset: `--data-root` when given, else where the run read it
    (the `data` node of its config); DataError, naming which, when it is not there."""
    if given:
        if not Path(given).expanduser().is_dir():
            raise DataError(f"--data-root {given}: no such folder; give the folder that holds {data['name']}'s files.")
        return str(Path(given).expanduser().absolute())
    if not Path(data["root"]).is_dir():
        raise DataError(f"the data of run {run_id} is not at {data['root']}: give --data-root DIR.")
    return data["root"]


@dataclass(frozen=True)
class TrainedModel:
    """A model a run logged (or any MLflow model), loaded on the CPU for inference."""

    spec: str  # how the command line named it
    ref: Any  # tracking.lookup.ModelRef: its URI, and the run that logged it
    run: Any  # that run; None when no run logged it
    config: Optional[dict]  # the run's config.yaml; None without a run mnist-cnn-train made
    module: Any  # torch.nn.Module, in eval mode
    classes: Tuple[str, ...]  # its output's class names: the dataset's, else the indices

    def data(self) -> dict:
        """The `data` node of the config the model was trained with (what eval and export score it
        on); ModelError when the dataset is unknown or the model does not fit it."""
        if self.config is None:
            raise unknown_dataset(self.spec)
        data, classes = self.config["data"], len(dataset_info(self.config["data"]["name"]).classes)
        if len(self.classes) != classes:
            raise ModelError(
                f"{self.spec}: gives ({len(self.classes)},) outputs for each image, but the dataset has {classes} "
                "classes."
            )
        return data

    @property
    def precision(self) -> str:
        """What the run trained in: fp32 or bf16 (autocast; its logged weights are fp32 either way)."""
        return self.run.data.params.get("trainer.precision") or self.config["trainer"]["precision"] or "fp32"


def unknown_dataset(spec: str) -> ModelError:
    return ModelError(
        f"{spec}: no run logged this model, so its dataset is unknown; give the id of the run that logged it."
    )


def load_model(client: Any, spec: str, scored: bool = False) -> TrainedModel:
    """The model `spec` names (a run id or model URI) in `client`'s store, with the run and config
    behind it, rebuilt from its network and weights without unpickling anything (tracking.model);
    ModelError (naming `spec`) when it cannot be found, loaded that way, or given an image, or, to
    be `scored` on its dataset, when no run logged it."""
    import torch  # torch and MLflow take seconds to import: only after the arguments are parsed

    from mnist_cnn.tracking import model as logged  # torch and MLflow, as above
    from mnist_cnn.tracking.lookup import class_names, find_run, logged_config, model_files, resolve_model  # MLflow

    ref = resolve_model(client, spec)
    if scored and ref.run_id is None:  # known before the model is downloaded
        raise unknown_dataset(spec)
    run = find_run(client, ref.run_id, spec) if ref.run_id else None
    config = logged_config(client, run.info.run_id) if run is not None else None
    try:
        with tempfile.TemporaryDirectory() as folder:
            files = model_files(client, ref)  # where its files are, found through this store's client
            module = logged.load_model(files, folder, client.tracking_uri, spec)  # rebuilt: never unpickled
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for a missing or unreadable model
        raise ModelError(f"{spec}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from e
    try:
        with torch.inference_mode():
            outputs = module(torch.zeros(2, *IMAGE_SHAPE)).shape
    except Exception as e:  # noqa: BLE001 - any failure here means the shapes do not match
        raise ModelError(
            f"{spec}: does not take images of shape (N, {', '.join(map(str, IMAGE_SHAPE))}) ({type(e).__name__}: "
            f"{str(e)[:200]})."
        ) from e
    return TrainedModel(spec, ref, run, config, module, class_names(config, outputs[-1]))


def load_onnx(path: str, flag: str = "") -> Tuple[Any, Tuple[str, ...]]:
    """An ONNX file (mnist-cnn-export), run by onnxruntime (no PyTorch module computes), and the
    class names it holds; ModelError, its message starting with `flag` (predict's --model) and the path."""
    prefix = f"{flag} " if flag else ""
    onnx_file.require(f"{prefix}{path}", onnx_file.RUN_PACKAGES)
    try:
        net = onnx_file.OnnxModel(path, IMAGE_SHAPE)
    except ModelError as e:
        raise ModelError(f"{prefix}{e}") from e
    return net, net.classes()


def test_split(trained: TrainedModel, given_root: Optional[str]) -> Any:
    """The test split of the dataset `trained` was trained on: where its run read it, or under
    --data-root; never downloaded."""
    from mnist_cnn.data.idx import load_split  # torch

    data = trained.data()
    root = data_root(given_root, data, trained.run.info.run_id)
    return load_split(root, data["name"], "test", "never", data["verify_checksums"])
