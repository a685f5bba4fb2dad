"""What every task shape shares: the decision saved with an adapter, the scored answers, the metric functions,
and the interface each shape implements (Task)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..stats import bootstrap_interval, mcnemar_exact, paired_bootstrap_p

if TYPE_CHECKING:  # torch loads with the first model, not with the task tables (loralab --help)
    import torch


# Fewer validation rows than this fit a temperature that is noise (one row gave T at its bound, 20): refused.
MIN_CALIBRATION_ROWS = 100


@dataclass
class Decision:
    """What turns a run's logits into answers, saved with each adapter (decision.json): the per-label
    thresholds of a multi-label run, the target scaling of a regression, the temperature that calibrates
    the probabilities."""

    thresholds: list[float] | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    temperature: float = 1.0  # logits are divided by it before probabilities (train.calibrate: temperature)
    temperature_rows: int | None = None  # the validation rows it was fitted on


@dataclass
class Scored:
    """A task's answers for some rows: predictions (class, multi-hot list or number) and the scores behind
    them (class probabilities, label probabilities, or the number itself)."""

    predictions: list
    scores: list = field(default_factory=list)


# --- metrics: each takes numpy arrays of targets and predictions ---------------------------------------


def confusion(targets: np.ndarray, predictions: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(targets * n + predictions, minlength=n * n).reshape(n, n)


def accuracy(targets, predictions) -> float:
    return float(np.mean(targets == predictions))


def f1_macro_classes(targets, predictions, n: int) -> float:
    matrix = confusion(targets, predictions, n)
    tp, predicted, actual = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    denominator = predicted + actual
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))


def mcc(targets, predictions, n: int) -> float:
    """Matthews correlation of a K-class confusion matrix (Gorodkin's R_K; 0 where undefined, as sklearn)."""
    matrix = confusion(targets, predictions, n).astype(float)
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


class Task:
    """The interface of a task shape: everything outside tasks/ asks the task object, never which task it is.

    name, problem_type        data.task, and Hugging Face's problem_type (a merged export's loss)
    column, probabilities     predict's answer column (Label, Labels, Score); whether answers have probabilities
    metrics, lower_is_better  the metrics' names (the first picks the peak by default), which fall as they improve
    window_pooling            how a chunked text's windows' logits make its own: mean, or max (a label on anywhere)
    metric_functions()        every metric of the task, by name
    label_names_problem()     what is wrong with a configured label set (data.label_names)
    unnamed_labels()          the output names where none are configured (None: the data's classes)
    label_values()            the class labels one row's label holds (one, or a multi-label row's several)
    read_target()             one row's label as training takes it (a class, a multi-hot list, a number)
    classes_present()         which classes some targets hold (None: a task without classes)
    loss(), score(), answer() the training loss; logits to answers; one answer as users read it
    cell()                    one answer as predict's CSV writes it
    interval()                the 95% interval of a metric on some rows
    training_decision()       what training learns from its targets first (a regression's scaling)
    fit_decision()            what an evaluation learns on the validation rows (thresholds, a temperature)
    calibration_events()      each stated probability and whether its event happened (None: no probabilities)
    report()                  what an evaluation shows beyond the metrics (per class, per label)
    paired_test()             two runs' answers on the same rows: the p-value of their difference
    """

    name = ""
    problem_type = ""
    column = "Label"
    probabilities = True
    metrics: tuple[str, ...] = ()
    lower_is_better: tuple[str, ...] = ()
    window_pooling = "mean"  # a chunked text's logits from its windows' (data.long_texts: chunk)

    def __init__(self, outputs: int):
        self.n = outputs

    def metric_functions(self) -> dict:
        raise NotImplementedError

    # --- reading labels (data.py asks; `reader` holds the row's place and the class-label parsing) ---

    @staticmethod
    def label_names_problem(names: list[str]) -> str | None:
        return "data.label_names: need at least two classes" if len(names) == 1 else None

    @staticmethod
    def unnamed_labels(label_column: str) -> list[str] | None:
        return None

    @staticmethod
    def label_values(value, reader) -> list:
        return [value]

    @staticmethod
    def read_target(value, reader):
        return reader.class_index(value)

    @staticmethod
    def classes_present(targets: list) -> set[int] | None:
        return set(targets)

    def cell(self, prediction, names: list[str] | None, separator: str) -> str:
        return str(self.answer(prediction, names))

    def interval(self, name: str, targets, predictions) -> tuple[float, float]:
        return bootstrap_interval(self.metric_functions()[name], targets, predictions)

    def fit_decision(
        self, logits: torch.Tensor, targets: list, decision: Decision, tune: bool, calibrate: str = "none"
    ) -> Decision:
        """With train.calibrate: temperature, the one temperature that minimises the loss on these rows."""
        if calibrate != "temperature":
            return decision
        return replace(decision, temperature=self.fit_temperature(logits, targets), temperature_rows=len(targets))

    def fit_temperature(self, logits: torch.Tensor, targets: list) -> float:
        """Temperature scaling (Guo et al. 2017): T > 0 minimising the task's loss of logits / T, fitted by
        L-BFGS on log T. Dividing every logit by one T changes no argmax and no logit's sign: no label."""
        import torch

        logits, truth = logits.detach().float(), torch.tensor(targets)
        log_t = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = self.loss(logits / log_t.exp(), truth, Decision())
            loss.backward()
            return loss

        optimizer.step(closure)
        return float(log_t.detach().exp().clamp(0.05, 20.0))

    def calibration_events(self, targets: list, scores: list) -> tuple[list, list] | None:
        return None

    def training_decision(self, targets: list, scale_targets: bool) -> Decision:
        """What training learns from its targets before the first step (a regression's scaling)."""
        return Decision()

    def report(self, targets: list, predictions: list, names: list[str], decision: Decision) -> dict:
        return {}

    def paired_test(self, metric: str, targets: list, a: list, b: list) -> dict:
        """No right or wrong per row: the rows resampled together (a paired bootstrap)."""
        p = paired_bootstrap_p(self.metric_functions()[metric], targets, a, b)
        return {"p_value": p, "only_a": None, "only_b": None, "test": "paired bootstrap", "note": "paired bootstrap"}


def mcnemar(targets: list, a: list, b: list) -> dict:
    """The exact McNemar test on the rows exactly one of two answer lists gets right."""
    right_a = [p == y for p, y in zip(a, targets)]
    right_b = [p == y for p, y in zip(b, targets)]
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    p = mcnemar_exact(only_a, only_b)
    return {"p_value": p, "only_a": only_a, "only_b": only_b, "test": "exact McNemar", "note": ""}
