"""Task shapes, each one object behind one interface (base.Task), plugged in through one table as PEFT plugs
its tuners: single_label, multi_label and regression, each Hugging Face's `problem_type`. data.py reads the
rows of a file and asks the task what a row's label is; config.py takes the task names and metrics from here."""

from __future__ import annotations

import numpy as np

from .base import Decision, Scored, Task
from .multi_label import MultiLabel
from .regression import Regression
from .single_label import SingleLabel

SHAPES: dict[str, type[Task]] = {shape.name: shape for shape in (SingleLabel, MultiLabel, Regression)}

__all__ = ["SHAPES", "Decision", "MultiLabel", "Regression", "Scored", "SingleLabel", "Task", "metrics", "task_for"]


def task_for(cfg) -> Task:
    """The task of a configuration (a config.Config: not imported here, config.py takes its task tables from
    this package) whose label set is known (named, or read from the data)."""
    return SHAPES[cfg.data.task](len(cfg.data.label_names))


def metrics(task: Task, targets: list, predictions: list) -> dict[str, float]:
    """Every metric of the task on these rows."""
    t, p = np.asarray(targets), np.asarray(predictions)
    return {name: fn(t, p) for name, fn in task.metric_functions().items()}
