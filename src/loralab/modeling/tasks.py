"""Task shapes: how the head's outputs become a loss, answers and metrics.

single_label  one class per row: softmax, cross-entropy; accuracy (95% Wilson interval), macro-F1, Matthews
multi_label   any set of classes per row: a sigmoid per class, binary cross-entropy, a decision threshold
              per class (0.5, or tuned on the validation rows); micro/macro-F1, subset accuracy, per-label F1
regression    one number per row: one output, mean squared error (on standardised targets where
              data.scale_targets); Pearson, Spearman, MSE

Each is Hugging Face's `problem_type`, so a merged export loads in plain transformers with the right loss.
How a label is read from a data file is data.py's part; this module starts at the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..stats import bootstrap_interval, wilson_interval

PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


@dataclass
class Decision:
    """What turns a run's logits into answers, saved with each adapter (decision.json): the per-label
    thresholds of a multi-label run, the target scaling of a regression."""

    thresholds: list[float] | None = None
    target_mean: float = 0.0
    target_std: float = 1.0


@dataclass
class Scored:
    """A task's answers for some rows: predictions (class, multi-hot list or number) and the scores behind
    them (class probabilities, label probabilities, or the number itself)."""

    predictions: list
    scores: list = field(default_factory=list)


# --- metrics: each takes numpy arrays of targets and predictions ---------------------------------------


def _confusion(targets: np.ndarray, predictions: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(targets * n + predictions, minlength=n * n).reshape(n, n)


def accuracy(targets, predictions) -> float:
    return float(np.mean(targets == predictions))


def f1_macro_classes(targets, predictions, n: int) -> float:
    matrix = _confusion(targets, predictions, n)
    tp, predicted, actual = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    denominator = predicted + actual
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))


def mcc(targets, predictions, n: int) -> float:
    """Matthews correlation of a K-class confusion matrix (Gorodkin's R_K; 0 where undefined, as sklearn)."""
    matrix = _confusion(targets, predictions, n).astype(float)
    t, p, c, s = matrix.sum(1), matrix.sum(0), np.trace(matrix), matrix.sum()
    denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denominator) if denominator > 0 else 0.0


def per_label_f1(targets, predictions) -> np.ndarray:
    tp = (targets * predictions).sum(0)
    denominator = targets.sum(0) + predictions.sum(0)
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def f1_micro_labels(targets, predictions) -> float:
    tp = (targets * predictions).sum()
    denominator = targets.sum() + predictions.sum()
    return float(2 * tp / denominator) if denominator > 0 else 0.0


def subset_accuracy(targets, predictions) -> float:
    return float(np.mean(np.all(targets == predictions, axis=1)))


def pearson(targets, predictions) -> float:
    if np.std(targets) == 0 or np.std(predictions) == 0:
        return float("nan")
    return float(np.corrcoef(targets, predictions)[0, 1])


def spearman(targets, predictions) -> float:
    from scipy.stats import rankdata

    return pearson(rankdata(targets), rankdata(predictions))


def mse(targets, predictions) -> float:
    return float(np.mean((np.asarray(targets, float) - np.asarray(predictions, float)) ** 2))


# --- the tasks -----------------------------------------------------------------------------------------


class SingleLabel:
    name = "single_label"

    def __init__(self, n_classes: int):
        self.n = n_classes

    def metric_functions(self) -> dict:
        return {
            "accuracy": accuracy,
            "f1_macro": lambda t, p: f1_macro_classes(t, p, self.n),
            "mcc": lambda t, p: mcc(t, p, self.n),
        }

    def loss(self, logits, targets, decision: Decision, class_weights=None, label_smoothing: float = 0.0):
        return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=label_smoothing)

    def score(self, logits: torch.Tensor, decision: Decision) -> Scored:
        probabilities = logits.float().softmax(-1)
        return Scored(probabilities.argmax(-1).tolist(), probabilities.tolist())

    def answer(self, prediction: int, names: list[str] | None):
        """One row's answer as users read it (predict's CSV, the server's JSON): the class, by name if given."""
        return names[prediction] if names else prediction

    def interval(self, name: str, targets, predictions) -> tuple[float, float]:
        if name == "accuracy":  # a proportion: the closed form
            return wilson_interval(int(np.sum(np.asarray(targets) == np.asarray(predictions))), len(targets))
        return bootstrap_interval(self.metric_functions()[name], targets, predictions)


class MultiLabel:
    name = "multi_label"

    def __init__(self, n_labels: int):
        self.n = n_labels

    def metric_functions(self) -> dict:
        return {
            "f1_micro": f1_micro_labels,
            "f1_macro": lambda t, p: float(np.mean(per_label_f1(t, p))),
            "subset_accuracy": subset_accuracy,
        }

    def loss(self, logits, targets, decision: Decision, class_weights=None, label_smoothing: float = 0.0):
        # Label smoothing toward 0.5 for every label, as the single-label loss smooths toward uniform.
        targets = targets.float() * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=class_weights)

    def score(self, logits: torch.Tensor, decision: Decision) -> Scored:
        probabilities = logits.float().sigmoid()
        thresholds = torch.tensor(decision.thresholds or [0.5] * self.n)
        return Scored((probabilities >= thresholds).int().tolist(), probabilities.tolist())

    def answer(self, prediction: list[int], names: list[str] | None) -> list:
        """The labels that are on, by name if given."""
        return [names[i] if names else i for i, on in enumerate(prediction) if on]

    def tune(self, logits: torch.Tensor, targets: list) -> Decision:
        """Per label, the threshold of the grid with the best F1 on these rows (ties: the one nearest 0.5)."""
        probabilities, truth = logits.float().sigmoid().numpy(), np.asarray(targets)
        chosen = []
        for label in range(self.n):
            f1s = [per_label_f1(truth[:, label : label + 1], (probabilities[:, label : label + 1] >= g))[0]
                   for g in THRESHOLD_GRID]  # fmt: skip
            best = max(range(len(THRESHOLD_GRID)), key=lambda i: (f1s[i], -abs(THRESHOLD_GRID[i] - 0.5)))
            chosen.append(float(THRESHOLD_GRID[best]))
        return Decision(thresholds=chosen)

    def interval(self, name: str, targets, predictions) -> tuple[float, float]:
        return bootstrap_interval(self.metric_functions()[name], targets, predictions)


class Regression:
    name = "regression"

    def metric_functions(self) -> dict:
        return {"pearson": pearson, "spearman": spearman, "mse": mse}

    def loss(self, logits, targets, decision: Decision, class_weights=None, label_smoothing: float = 0.0):
        scaled = (targets.float() - decision.target_mean) / decision.target_std
        return F.mse_loss(logits.float().squeeze(-1), scaled)

    def score(self, logits: torch.Tensor, decision: Decision) -> Scored:
        values = (logits.float().squeeze(-1) * decision.target_std + decision.target_mean).tolist()
        return Scored(values, values)

    def answer(self, prediction: float, names: list[str] | None) -> float:
        return prediction

    def interval(self, name: str, targets, predictions) -> tuple[float, float]:
        return bootstrap_interval(self.metric_functions()[name], targets, predictions)


def task_for(cfg: Config):
    """The task of a configuration whose label set is known (named, or read from the data)."""
    n = len(cfg.data.label_names)
    return {"single_label": lambda: SingleLabel(n), "multi_label": lambda: MultiLabel(n), "regression": Regression}[
        cfg.data.task
    ]()


def metrics(task, targets: list, predictions: list) -> dict[str, float]:
    """Every metric of the task on these rows."""
    t, p = np.asarray(targets), np.asarray(predictions)
    return {name: fn(t, p) for name, fn in task.metric_functions().items()}


def target_scaling(cfg: Config, targets: list[float]) -> Decision:
    """A regression's standardisation from its training targets (data.scale_targets), else none."""
    if cfg.data.task != "regression" or not cfg.data.scale_targets:
        return Decision()
    std = float(np.std(targets))
    return Decision(target_mean=float(np.mean(targets)), target_std=std if std > 0 else 1.0)
