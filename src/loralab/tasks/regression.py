"""regression: one number per row. One output and mean squared error (on standardised targets where
data.scale_targets); Pearson, Spearman and MSE; no probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import Decision, Scored, Task, mse, pearson, spearman

if TYPE_CHECKING:  # torch loads with the first model, not with the task tables (loralab --help)
    import torch


class Regression(Task):
    name = "regression"
    problem_type = "regression"
    column = "Score"
    probabilities = False

    metrics = ("pearson", "spearman", "mse")
    lower_is_better = ("mse",)

    def metric_functions(self) -> dict:
        return dict(zip(self.metrics, (pearson, spearman, mse)))

    @staticmethod
    def label_names_problem(names: list[str]) -> str | None:
        return "data.label_names: a regression has one output: name one, or none" if len(names) > 1 else None

    @staticmethod
    def unnamed_labels(label_column: str) -> list[str]:
        return [label_column]  # its one output, named by its column

    @staticmethod
    def read_target(value, reader) -> float:
        return reader.number(value)

    @staticmethod
    def classes_present(targets: list) -> None:
        return None

    def loss(self, logits, targets, decision: Decision, class_weights=None, label_smoothing: float = 0.0):
        import torch.nn.functional as F

        scaled = (targets.float() - decision.target_mean) / decision.target_std
        return F.mse_loss(logits.float().squeeze(-1), scaled)

    def score(self, logits: torch.Tensor, decision: Decision) -> Scored:
        values = (logits.float().squeeze(-1) * decision.target_std + decision.target_mean).tolist()
        return Scored(values, values)

    def answer(self, prediction: float, names: list[str] | None) -> float:
        return prediction

    def cell(self, prediction, names: list[str] | None, separator: str) -> str:
        return f"{prediction:.6g}"

    def training_decision(self, targets: list, scale_targets: bool) -> Decision:
        """The standardisation of the training targets (data.scale_targets), else none."""
        if not scale_targets:
            return Decision()
        std = float(np.std(targets))
        return Decision(target_mean=float(np.mean(targets)), target_std=std if std > 0 else 1.0)
