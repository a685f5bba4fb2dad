"""single_label: one class per row. Softmax and cross-entropy; accuracy (95% Wilson interval), macro-F1 and
Matthews correlation; per-class precision, recall, F1 and the confusion matrix; the exact McNemar test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..stats import wilson_interval
from .base import Decision, Scored, Task, accuracy, confusion, f1_macro_classes, mcc, mcnemar

if TYPE_CHECKING:  # torch loads with the first model, not with the task tables (loralab --help)
    import torch


class SingleLabel(Task):
    name = "single_label"
    problem_type = "single_label_classification"
    metrics = ("accuracy", "f1_macro", "mcc")

    def metric_functions(self) -> dict:
        n = self.n
        return dict(zip(self.metrics, (accuracy, lambda t, p: f1_macro_classes(t, p, n), lambda t, p: mcc(t, p, n))))

    def loss(self, logits, targets, decision: Decision, class_weights=None, label_smoothing: float = 0.0):
        import torch.nn.functional as F

        return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=label_smoothing)

    def score(self, logits: torch.Tensor, decision: Decision) -> Scored:
        probabilities = (logits.float() / decision.temperature).softmax(-1)
        return Scored(probabilities.argmax(-1).tolist(), probabilities.tolist())

    def calibration_events(self, targets: list, scores: list) -> tuple[list, list]:
        """Top-label calibration: the probability of the class answered, and whether it was right."""
        scores = np.asarray(scores)
        return scores.max(1).tolist(), (scores.argmax(1) == np.asarray(targets)).astype(float).tolist()

    def answer(self, prediction: int, names: list[str] | None):
        """One row's answer as users read it (predict's CSV, the server's JSON): the class, by name if given."""
        return names[prediction] if names else prediction

    def interval(self, name: str, targets, predictions) -> tuple[float, float]:
        if name == "accuracy":  # a proportion: the closed form
            return wilson_interval(int(np.sum(np.asarray(targets) == np.asarray(predictions))), len(targets))
        return super().interval(name, targets, predictions)

    def report(self, targets: list, predictions: list, names: list[str], decision: Decision) -> dict:
        """Precision, recall, F1 and support of each class (0 where undefined, as scikit-learn), and the
        confusion matrix, matrix[true][predicted] = rows."""
        matrix = confusion(np.asarray(targets), np.asarray(predictions), self.n)
        tp, predicted, actual = np.diag(matrix), matrix.sum(0), matrix.sum(1)
        per_class = {
            name: {
                "precision": float(tp[c] / predicted[c]) if predicted[c] else 0.0,
                "recall": float(tp[c] / actual[c]) if actual[c] else 0.0,
                "f1": float(2 * tp[c] / (predicted[c] + actual[c])) if predicted[c] + actual[c] else 0.0,
                "support": int(actual[c]),
            }
            for c, name in enumerate(names)
        }
        return {"per_class": per_class, "confusion_matrix": matrix.tolist()}

    def paired_test(self, metric: str, targets: list, a: list, b: list) -> dict:
        return mcnemar(targets, a, b)
