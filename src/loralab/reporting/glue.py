"""The GLUE table: runs on nyu-mll/glue beside the LoRA paper's roberta-base row (Hu et al. 2021, Table 2:
LoRA on query and value, 0.3M trainable; full fine-tuning of 125M averaged 86.4)."""

from __future__ import annotations

import statistics

from ..runs.results import RunRecord
from ..stats import t_interval

GLUE_DATASETS = ("nyu-mll/glue", "glue")
# Task: (the metric the paper reports, its roberta-base LoRA value in points).
PAPER_ROBERTA_BASE_LORA = {
    "mnli": ("accuracy", 87.5),
    "sst2": ("accuracy", 95.1),
    "mrpc": ("accuracy", 89.7),
    "cola": ("mcc", 63.4),
    "qnli": ("accuracy", 93.3),
    "qqp": ("accuracy", 90.8),
    "rte": ("accuracy", 86.6),
    "stsb": ("pearson", 91.5),
}
PAPER_AVERAGE = 87.2


def glue_runs(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """GLUE runs by task, where the run's metric is the paper's for that task."""
    by_task: dict[str, list[RunRecord]] = {}
    for record in records:
        data = record.config.data
        if data.train in GLUE_DATASETS and data.subset in PAPER_ROBERTA_BASE_LORA:
            by_task.setdefault(data.subset, []).append(record)
    return by_task


def glue_table(records: list[RunRecord]) -> list[dict]:
    """One row per GLUE task: ours (mean over seeds, in points, with its 95% interval: over seeds where
    there are several, else the run's own on the dev rows), the paper's, the difference; then the average."""
    rows = []
    for task, (metric, paper) in PAPER_ROBERTA_BASE_LORA.items():
        runs = [r for r in glue_runs(records).get(task, []) if r.metric == metric]
        if not runs:
            continue
        peaks = [100 * r.peak for r in runs]
        mean = statistics.fmean(peaks)
        interval = t_interval(peaks) if len(runs) > 1 else tuple(100 * x for x in runs[0].interval())
        rows.append({"task": task, "metric": metric, "seeds": len(runs), "ours": mean, "ci": interval,
                     "paper": paper, "difference": mean - paper})  # fmt: skip
    if rows:
        every = len(rows) == len(PAPER_ROBERTA_BASE_LORA)
        ours = statistics.fmean(r["ours"] for r in rows)
        paper = PAPER_AVERAGE if every else statistics.fmean(r["paper"] for r in rows)
        rows.append({"task": "average" if every else f"average of {len(rows)} tasks", "metric": "", "seeds": None,
                     "ours": ours, "ci": None, "paper": paper, "difference": ours - paper})  # fmt: skip
    return rows
