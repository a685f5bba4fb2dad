"""multi_label: any set of classes per row. A sigmoid per class and binary cross-entropy; a decision threshold
per class (0.5, or tuned on the validation rows); micro/macro-F1, subset accuracy and per-label F1."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .base import Decision, Scored, Task, f1_micro_labels, per_label_f1, subset_accuracy

if TYPE_CHECKING:  # torch loads with the first model, not with the task tables (loralab --help)
    import torch

THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


class MultiLabel(Task):
    name = "multi_label"
    problem_type = "multi_label_classification"
    column = "Labels"
    metrics = ("f1_micro", "f1_macro", "subset_accuracy")
    window_pooling = "max"  # a label is on where any window of the text has it

    def metric_functions(self) -> dict:
        macro = lambda t, p: float(np.mean(per_label_f1(t, p)))  # noqa: E731 - one of three, named by its key
        return dict(zip(self.metrics, (f1_micro_labels, macro, subset_accuracy)))

    @staticmethod
    def label_values(value, reader) -> list:
        return reader.items(value)

    @staticmethod
    def read_target(value, reader) -> list[float]:
        """A multi-hot list over every label of the task."""
        chosen = {reader.class_index(item) for item in reader.items(value)}
        return [1.0 if i in chosen else 0.0 for i in range(reader.classes)]

    @staticmethod
    def classes_present(targets: list) -> set[int]:
        return {i for hot in targets for i, value in enumerate(hot) if value}

    def loss(self, logits, targets, decision: Decision, class_weights=None, label_smoothing: float = 0.0):
        # Label smoothing toward 0.5 for every label, as the single-label loss smooths toward uniform.
        import torch.nn.functional as F

        targets = targets.float() * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=class_weights)

    def score(self, logits: torch.Tensor, decision: Decision) -> Scored:
        import torch

        probabilities = (logits.float() / decision.temperature).sigmoid()
        thresholds = torch.tensor(decision.thresholds or [0.5] * self.n)
        return Scored((probabilities >= thresholds).int().tolist(), probabilities.tolist())

    def answer(self, prediction: list[int], names: list[str] | None) -> list:
        """The labels that are on, by name if given."""
        return [names[i] if names else i for i, on in enumerate(prediction) if on]

    def cell(self, prediction, names: list[str] | None, separator: str) -> str:
        return separator.join(map(str, self.answer(prediction, names)))

    def fit_decision(
        self, logits: torch.Tensor, targets: list, decision: Decision, tune: bool, calibrate: str = "none"
    ) -> Decision:
        """With train.tune_thresholds, per label the threshold of the grid with the best F1 on these rows (ties:
        the one nearest 0.5); with train.calibrate, then a temperature, each threshold carried through it so
        that no label changes (p >= t exactly where sigmoid(logit(p) / T) >= sigmoid(logit(t) / T))."""
        decision = self._thresholds(logits, targets, decision, tune)
        if calibrate != "temperature":
            return decision
        temperature = self.fit_temperature(logits, targets)
        import torch

        raw = torch.tensor(decision.thresholds or [0.5] * self.n, dtype=torch.float64)
        carried = (torch.logit(raw) / temperature).sigmoid().tolist()
        return replace(decision, temperature=temperature, thresholds=carried, temperature_rows=len(targets))

    def calibration_events(self, targets: list, scores: list) -> tuple[list, list]:
        """Every label's probability, and whether the label was on."""
        return np.asarray(scores).ravel().tolist(), np.asarray(targets, float).ravel().tolist()

    def _thresholds(self, logits: torch.Tensor, targets: list, decision: Decision, tune: bool) -> Decision:
        if not tune:
            return decision
        probabilities, truth = logits.float().sigmoid().numpy(), np.asarray(targets)
        chosen = []
        for label in range(self.n):
            f1s = [per_label_f1(truth[:, label : label + 1], (probabilities[:, label : label + 1] >= g))[0]
                   for g in THRESHOLD_GRID]  # fmt: skip
            best = max(range(len(THRESHOLD_GRID)), key=lambda i: (f1s[i], -abs(THRESHOLD_GRID[i] - 0.5)))
            chosen.append(float(THRESHOLD_GRID[best]))
        return Decision(thresholds=chosen)

    def report(self, targets: list, predictions: list, names: list[str], decision: Decision) -> dict:
        truth = np.asarray(targets)
        f1s = per_label_f1(truth, np.asarray(predictions))
        thresholds = decision.thresholds or [0.5] * len(names)
        return {
            "per_label": {
                name: {"f1": float(f1), "support": int(support), "threshold": threshold}
                for name, f1, support, threshold in zip(names, f1s, truth.sum(0), thresholds)
            }
        }
