"""A model as an ONNX file: exported by torch.onnx with a dynamic batch axis, checked by
onnx.checker and against PyTorch in onnxruntime, and run by onnxruntime alone
(`mnist-cnn-predict --model FILE.onnx`).

The file takes float32 images in [0, 1] of shape (N, 1, 28, 28), named `images`, and returns
`logits` (N, classes); like the logged model, it normalises inside. Its metadata holds the class
names and the model it was exported from. It is always fp32: a model trained in bf16 autocast
keeps fp32 weights, and is exported as they are.

onnx, onnxscript (which torch.onnx.export uses) and onnxruntime come in the `export` extra; they
and torch are imported only by the functions that use them, so that `require` can name what is
missing before anything slow is loaded.
"""

import copy
import importlib.util
import json
import logging
import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Tuple

import numpy as np

from mnist_cnn.errors import ConfigError, ModelError, UserError

EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # what writing a file needs
RUN_PACKAGES = ("onnxruntime",)  # what running one needs
INSTALL = "pip install 'mnist_cnn[export]'"
COMPARED = 1000  # test images an exported file is run on, against PyTorch
TOLERANCE = 1e-4  # the largest logit difference from PyTorch accepted (fp32 on both sides)
INPUT, OUTPUT = "images", "logits"
CLASSES, SOURCE = "mnist_cnn.classes", "mnist_cnn.source"  # metadata: class names (a JSON list), model URI


def require(what: str, packages: Sequence[str] = EXPORT_PACKAGES) -> None:
    """ConfigError naming the extra to install when one of `packages` is not installed; `what` is
    the flag or key that needs them."""
    absent = [p for p in packages if importlib.util.find_spec(p) is None]
    if absent:
        them = "them" if len(packages) > 1 else "it"
        raise ConfigError(
            f"{what} needs {_listed(packages)}, which {'are' if len(absent) > 1 else 'is'} not installed "
            f"({_listed(absent)}); install {them} with: {INSTALL}"
        )


def _listed(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


@dataclass(frozen=True)
class Exported:
    """What one export wrote and how its file compared with PyTorch."""

    opset: int
    images: int  # the images both ran on
    max_difference: float  # the largest absolute difference of any logit
    same_class: int  # images both gave the same class


def export(model, images, path: Path, classes: Tuple[str, ...], source: str) -> Exported:
    """Write an fp32 CPU copy of `model` to `path` as ONNX, with a dynamic batch axis, checked by
    onnx.checker and run in onnxruntime on `images` (N, 1, 28, 28) against PyTorch. The file is
    written beside `path` first and takes its name only once it matched (a full disk or a stop
    never leaves half a file); a difference over TOLERANCE is a bug of the exporter: RuntimeError."""
    import onnx  # the export extra: only exporting needs it
    import torch  # seconds to import: only once the command's input has been checked

    fp32 = copy.deepcopy(model).cpu().float().eval()
    images = images.cpu().float()
    with _quiet("onnxscript", "onnx_ir"):
        program = torch.onnx.export(
            fp32,
            (images[:2],),  # two, not one: a batch of one would be taken as a constant size
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    proto = program.model_proto
    for key, value in {CLASSES: json.dumps(list(classes)), SOURCE: source}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    # A name of its own beside `path`, created exclusively (two exports to one file at once never share
    # it), in the same folder (os.replace is atomic there), with the permissions the umask gives.
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        _write(tmp, proto.SerializeToString())
        with torch.inference_mode():
            expected = fp32(images)
        got = OnnxModel(tmp, tuple(images.shape[1:]))(images)
        result = Exported(
            opset, len(images), float((got - expected).abs().max()), int((got.argmax(1) == expected.argmax(1)).sum())
        )
        if not result.max_difference <= TOLERANCE:  # NaN too
            raise RuntimeError(
                f"{source} exported to ONNX gives logits up to {result.max_difference:.2e} away from PyTorch's on "
                f"{result.images} test images (at most {TOLERANCE:.0e} expected); {path} was not written."
            )
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(
            f"cannot write {path}: {(e.strerror or str(e)).lower()}; choose another file or make room."
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return result


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter's optimiser logs each of its passes at INFO, which a training run's log shows."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _write(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename gives it its name


class OnnxModel:
    """An ONNX file run by onnxruntime on the CPU, called as the PyTorch model is: float images
    (N, *in_shape) in [0, 1] in, logits out, as torch tensors; onnxruntime computes them."""

    def __init__(self, path: Path, in_shape: Tuple[int, ...]):
        """ModelError when the file is missing, is no model onnxruntime loads, or does not take
        images of `in_shape`."""
        import onnxruntime  # the export extra: only ONNX files need it

        if not Path(path).exists():
            raise ModelError(f"{path}: no such file; give an .onnx file that mnist-cnn-export wrote.")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own kinds for every unreadable file
            raise ModelError(f"{path}: onnxruntime cannot load it ({_first_line(e)}); give an ONNX model file.") from e
        self.path = path
        self.input = self.session.get_inputs()[0].name
        batch = self.session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) else None  # a file exported with a fixed batch (often 1)
        try:
            self.num_classes = self._logits(np.zeros((self.batch or 2, *in_shape), np.float32)).shape[1]
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - as above, for an input of another shape or type
            raise ModelError(
                f"{path}: does not take float images of shape (N, {', '.join(map(str, in_shape))}) ({_first_line(e)})."
            ) from e
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def __call__(self, images):
        """The logits (N, classes) of `images`; a file with a fixed batch is given the images that
        many at a time, the last batch filled up with blank images whose logits are dropped."""
        import torch  # only to hand the logits back as the PyTorch model would

        images = images.cpu().numpy()
        if self.batch is None:
            return torch.from_numpy(self._logits(images))
        parts = [images[i : i + self.batch] for i in range(0, len(images), self.batch)]
        return torch.from_numpy(
            np.concatenate([self._logits(_filled(part, self.batch))[: len(part)] for part in parts])
        )

    def _logits(self, images: np.ndarray) -> np.ndarray:
        """onnxruntime's output for `images` as one row of class scores per image; ModelError for
        an output of another shape (one number per image, say)."""
        out = self.session.run(None, {self.input: images})[0]
        if out.ndim == 1 and len(images) == 1 and out.size > 1:  # a batch of one, squeezed away
            out = out[None]
        if out.ndim != 2 or out.shape[0] != len(images) or out.shape[1] < 2:
            raise ModelError(
                f"{self.path}: gives an output of shape {tuple(out.shape)} for {len(images)} image(s); "
                "predict needs (N, classes): a row of class scores (logits) per image, for two classes or more."
            )
        return out

    def classes(self) -> Tuple[str, ...]:
        """The class names mnist-cnn-export wrote into the file, else the class indices."""
        names = tuple(json.loads(self.metadata.get(CLASSES, "[]")))
        return names if len(names) == self.num_classes else tuple(str(i) for i in range(self.num_classes))


def _filled(images: np.ndarray, batch: int) -> np.ndarray:
    """`images` followed by blank images up to `batch`."""
    return np.concatenate([images, np.zeros((batch - len(images), *images.shape[1:]), images.dtype)])


def _first_line(error: Exception) -> str:
    return (
        f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        if str(error).strip()
        else type(error).__name__
    )
