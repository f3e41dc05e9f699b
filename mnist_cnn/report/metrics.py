"""Scoring a model on a split, class by class, without moving the split off its device.

The confusion matrix is one `bincount` on the device; per-class precision, recall and F1 follow
from its rows and columns. Only the small results (a CxC matrix, a few numbers per class, the
handful of images the figures show) come back to the host. (torchmetrics computes the same, but
importing it pulls in torchvision's detection ops and torch._dynamo, seconds of every run's start
for three divisions: docs/speed.md.)
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

from mnist_cnn import names
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
        return {names.class_metric(prefix, k): value for k, value in enumerate(self.recall)}

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
        raise ModelError(
            f"{name}: does not take images of shape (N, {', '.join(map(str, shape))}) ({type(e).__name__}: "
            f"{str(e)[:200]})."
        ) from e
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(
            f"{name}: gives {tuple(out.shape[1:])} outputs for each image, but the dataset has {num_classes} classes."
        )


def score(
    model: torch.nn.Module,
    split: Split,
    classes: Tuple[str, ...],
    batch_size: int,
    precision: str = "fp32",
    n_mistakes: int = 16,
) -> Report:
    """One pass over `split`: loss, accuracy, the per-class table and the most confident mistakes."""
    probabilities = []
    loss_sum = torch.zeros((), device=split.labels.device)
    for logits, labels in predictions(model, split, batch_size, precision):
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        probabilities.append(logits.softmax(1))
    probs = torch.cat(probabilities)
    predicted = probs.argmax(1)
    confusion = confusion_matrix(predicted, split.labels, len(classes))
    precision, recall, f1 = per_class(confusion)
    return Report(
        classes=classes,
        loss=loss_sum.item() / len(split),
        accuracy=(predicted == split.labels).sum().item() / len(split),
        confusion=confusion.cpu(),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        mistakes=_most_confident_mistakes(split, probs, predicted, n_mistakes),
    )


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = true class, columns = predicted class."""
    pairs = target * num_classes + predicted
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(confusion: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall and F1 of each class; 0 where a class was never predicted or never present
    (as scikit-learn's and torchmetrics' defaults give)."""
    hits = confusion.diagonal().double()
    precision = hits / confusion.sum(0).clamp(min=1)
    recall = hits / confusion.sum(1).clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(hits))
    return precision, recall, f1


def _most_confident_mistakes(split: Split, probs: torch.Tensor, predicted: torch.Tensor, n: int) -> List[Mistake]:
    wrong = (predicted != split.labels).nonzero().squeeze(1)
    confidence = probs[wrong, predicted[wrong]]
    chosen = wrong[confidence.argsort(descending=True)[:n]]
    return [
        Mistake(split.image(i).cpu(), int(split.labels[i]), int(predicted[i]), float(probs[i, predicted[i]]))
        for i in chosen.tolist()
    ]
