"""The statistics every result is shown with, in one place: intervals of one run's metric, tests between
two runs on the same rows, and intervals over seeds."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 1000


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: honest near 0 and 1 and for a few hundred rows."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (centre - half, centre + half)


def bootstrap_interval(
    metric: Callable[[np.ndarray, np.ndarray], float], targets: Sequence, predictions: Sequence, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of a metric without a closed form (F1, Matthews, Pearson, ...):
    the rows resampled with replacement, the metric recomputed on each resample. Seeded: the same rows
    give the same interval."""
    targets, predictions = np.asarray(targets), np.asarray(predictions)
    rng = np.random.default_rng(seed)
    n = len(targets)
    values = [metric(targets[idx], predictions[idx]) for idx in rng.integers(0, n, (BOOTSTRAP_SAMPLES, n))]
    with warnings.catch_warnings():  # every resample undefined (constant values): NaN, said once by the caller
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(values, [2.5, 97.5])
    return (float(low), float(high))


def paired_differences(
    metric: Callable[[np.ndarray, np.ndarray], float],
    targets: Sequence,
    predictions_a: Sequence,
    predictions_b: Sequence,
    seed: int = 0,
) -> np.ndarray:
    """metric(a) - metric(b) on bootstrap resamples of the same rows (resampled together: paired); seeded."""
    targets, a, b = np.asarray(targets), np.asarray(predictions_a), np.asarray(predictions_b)
    rng = np.random.default_rng(seed)
    n = len(targets)
    resamples = rng.integers(0, n, (BOOTSTRAP_SAMPLES, n))
    return np.array([metric(targets[i], a[i]) - metric(targets[i], b[i]) for i in resamples])


def paired_bootstrap_p(metric, targets: Sequence, predictions_a: Sequence, predictions_b: Sequence) -> float:
    """Two-sided p-value of a metric's difference between two runs on the same rows, where McNemar does not
    apply (multi-label, regression): how often the resampled difference changes sign."""
    differences = paired_differences(metric, targets, predictions_a, predictions_b)
    differences = differences[~np.isnan(differences)]
    if len(differences) == 0 or np.all(differences == 0):
        return 1.0
    tail = min(np.mean(differences <= 0), np.mean(differences >= 0))
    return float(min(1.0, 2 * tail))


def paired_difference_interval(
    metric, targets: Sequence, predictions_a: Sequence, predictions_b: Sequence
) -> tuple[float, float]:
    """95% percentile bootstrap interval of metric(b) - metric(a) on the same rows."""
    differences = paired_differences(metric, targets, predictions_b, predictions_a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(differences, [2.5, 97.5])
    return (float(low), float(high))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: of the rows exactly one run gets right, is the split 50/50?"""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """95% t-interval of a mean over a few seeds (None for one value)."""
    from scipy.stats import t

    if len(values) < 2:
        return None
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return (mean - half, mean + half)


CALIBRATION_BINS = 15  # equal-width confidence bins, as Guo et al. (2017) measure ECE


def calibration_bins(
    confidence: Sequence[float], happened: Sequence[float], bins: int = CALIBRATION_BINS
) -> list[dict]:
    """The reliability diagram's bins: for each equal-width bin of the stated confidence that holds rows, how many,
    their mean confidence and how often the event happened (the class predicted was right, a label was on)."""
    confidence, happened = np.asarray(confidence, float), np.asarray(happened, float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        rows = which == b
        if rows.any():
            mean_confidence, frequency = float(confidence[rows].mean()), float(happened[rows].mean())
            out.append({"low": b / bins, "high": (b + 1) / bins, "rows": int(rows.sum()),
                        "confidence": mean_confidence, "frequency": frequency})  # fmt: skip
    return out


def expected_calibration_error(confidence: Sequence[float], happened: Sequence[float]) -> float:
    """ECE: the gap between stated confidence and observed frequency, averaged over the bins by their rows
    (0: confidence means what it says)."""
    return ece_of_bins(calibration_bins(confidence, happened))


def ece_of_bins(bins: list[dict]) -> float:
    """The ECE of a reliability diagram's bins: each bin's gap weighted by its share of the rows."""
    total = sum(b["rows"] for b in bins)
    return float(sum(b["rows"] / total * abs(b["confidence"] - b["frequency"]) for b in bins)) if total else 0.0


def calibration(task, labels: list, scores: list) -> dict:
    """How far a task's probabilities are from meaning what they say: the ECE, its 95% bootstrap interval over
    the rows, and the reliability diagram's bins (nothing for a task without probabilities)."""
    events = task.calibration_events(labels, scores) if task.probabilities else None
    if events is None:
        return {}
    confidence, happened = events
    return {
        "ece": expected_calibration_error(confidence, happened),
        "ece_95ci": list(bootstrap_interval(expected_calibration_error, confidence, happened)),
        "reliability": calibration_bins(confidence, happened),
    }
