"""Classification metrics on held-out rows: loss, accuracy, macro-F1, and the per-row predictions."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Encoded, collate, eval_batches


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    f1: float
    predictions: list[int]  # in the rows' original order

    def metrics(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "f1": self.f1}


def macro_f1(labels: list[int], predictions: list[int], n_classes: int) -> float:
    """Mean over classes of F1; a class with no true and no predicted rows scores 0, as scikit-learn does."""
    scores = []
    for c in range(n_classes):
        tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
        predicted = sum(1 for p in predictions if p == c)
        actual = sum(1 for y in labels if y == c)
        scores.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return sum(scores) / n_classes


@torch.no_grad()
def evaluate(model, tokenizer, data: Encoded, batch_size: int, n_classes: int, device, autocast=nullcontext) -> Evaluation:
    was_training = model.training
    model.eval()
    predictions = [0] * len(data)
    loss_sum = 0.0
    for indices in eval_batches(data.lengths, batch_size):
        batch = collate(tokenizer, data, indices).to(device)
        labels = batch.pop("labels")
        with autocast():
            logits = model(**batch).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        for i, p in zip(indices, logits.argmax(-1).tolist()):
            predictions[i] = p
    model.train(was_training)
    correct = sum(p == y for p, y in zip(predictions, data.labels))
    return Evaluation(
        loss=loss_sum / len(data),
        accuracy=correct / len(data),
        f1=macro_f1(data.labels, predictions, n_classes),
        predictions=predictions,
    )
