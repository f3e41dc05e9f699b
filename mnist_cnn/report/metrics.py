"""Scoring a model on a split, class by class, without moving the split off its device.

torchmetrics computes the confusion matrix and per-class precision, recall and F1 from the
predictions; only the small results (a CxC matrix, a few numbers per class, the handful of
images the figures show) come back to the host.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from mnist_cnn.data.splits import Split
from mnist_cnn.engine.loop import predictions
from mnist_cnn.errors import ModelError


@dataclass
class Mistake:
    image: torch.Tensor  # (28, 28) uint8, on the CPU
    true: int
    predicted: int
    probability: float  # the model's probability for its wrong answer


@dataclass
class Report:
    classes: Tuple[str, ...]
    loss: float
    accuracy: float
    confusion: torch.Tensor  # (C, C) counts, rows = true class, on the CPU
    precision: List[float]
    recall: List[float]  # = the accuracy within each true class
    f1: List[float]
    mistakes: List[Mistake] = field(default_factory=list)  # most confident first

    def class_metrics(self, prefix: str = "test") -> Dict[str, float]:
        """`test_acc_class_<k>`: the accuracy on the images of class k."""
        return {f"{prefix}_acc_class_{k}": value for k, value in enumerate(self.recall)}

    def as_dict(self) -> Dict[str, Any]:
        """The classification report: precision, recall, F1 and support per class, and averages."""
        support = self.confusion.sum(1).tolist()
        rows = [
            {"class": k, "name": name, "precision": p, "recall": r, "f1": f, "support": s}
            for k, (name, p, r, f, s) in enumerate(zip(self.classes, self.precision, self.recall, self.f1, support))
        ]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        macro = {"precision": mean(self.precision), "recall": mean(self.recall), "f1": mean(self.f1)}
        return {"accuracy": self.accuracy, "loss": self.loss, "macro_avg": macro, "classes": rows}


@torch.inference_mode()
def check_fits(model: torch.nn.Module, shape: Tuple[int, ...], num_classes: int, name: str) -> None:
    """A model from elsewhere must take (N, *shape) images and give one logit per class."""
    try:
        out = model(torch.zeros(2, *shape))
    except Exception as e:  # noqa: BLE001 - any failure here means the shapes do not match
        raise ModelError(f"{name}: does not take images of shape (N, {', '.join(map(str, shape))}) ({type(e).__name__}: {str(e)[:200]}).") from e
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(f"{name}: gives {tuple(out.shape[1:])} outputs for each image, but the dataset has {num_classes} classes.")


def score(model: torch.nn.Module, split: Split, classes: Tuple[str, ...], batch_size: int, precision: str = "fp32",
          n_mistakes: int = 16) -> Report:
    """One pass over `split`: loss, accuracy, the per-class table and the most confident mistakes."""
    probabilities = []
    loss_sum = torch.zeros((), device=split.labels.device)
    for logits, labels in predictions(model, split, batch_size, precision):
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        probabilities.append(logits.softmax(1))
    probs = torch.cat(probabilities)
    predicted, target, n = probs.argmax(1), split.labels, len(classes)
    per_class = [f(predicted, target, num_classes=n, average=None).tolist() for f in (multiclass_precision, multiclass_recall, multiclass_f1_score)]
    return Report(
        classes=classes,
        loss=loss_sum.item() / len(split),
        accuracy=(predicted == target).sum().item() / len(split),
        confusion=multiclass_confusion_matrix(predicted, target, num_classes=n).cpu(),
        precision=per_class[0],
        recall=per_class[1],
        f1=per_class[2],
        mistakes=_most_confident_mistakes(split, probs, predicted, n_mistakes),
    )


def _most_confident_mistakes(split: Split, probs: torch.Tensor, predicted: torch.Tensor, n: int) -> List[Mistake]:
    wrong = (predicted != split.labels).nonzero().squeeze(1)
    confidence = probs[wrong, predicted[wrong]]
    chosen = wrong[confidence.argsort(descending=True)[:n]]
    return [
        Mistake(split.images[i].cpu(), int(split.labels[i]), int(predicted[i]), float(probs[i, predicted[i]]))
        for i in chosen.tolist()
    ]
