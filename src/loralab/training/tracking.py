"""Experiment trackers (TensorBoard, MLflow, W&B, Trackio, ...) through Accelerate: which to start,
where their files go, and what a run tells them. The logging calls themselves are Accelerate's."""

from __future__ import annotations

import importlib.util
import os
import re

from ..budget.count import Breakdown
from ..config import TRACKERS, Config
from ..errors import LoralabError
from ..runs.rundir import RunDir


def hyperparameters(cfg: Config, breakdown: Breakdown) -> dict:
    """The config as `section.key` values, plus the budget breakdown; lists as text, which every tracker takes."""
    values = cfg.flat()
    # Row labels such as "lora value (12 x r22)", in the characters every tracker accepts in a key.
    values |= {"trainable." + re.sub(r"[^\w.\- :/]", "", label): count for label, count in breakdown.rows}
    values |= {"trainable.total": breakdown.total, "trainable.budget": breakdown.budget}
    return {
        key: str(value) if isinstance(value, (list, dict)) or value is None else value for key, value in values.items()
    }


def check_installed(cfg: Config) -> None:
    """Each tracker of train.report_to importable here: said before a run trains, and only then (a run
    trained with a tracker is read, evaluated and served wherever loralab is)."""
    for tracker in cfg.train.report_to:
        if importlib.util.find_spec(TRACKERS[tracker]) is None:
            raise LoralabError(f"train.report_to: {tracker} is not installed (pip install {TRACKERS[tracker]})")


def tracker_settings(run: RunDir, cfg: Config) -> dict:
    """The Accelerator's arguments for the configured trackers: which, and where their files go."""
    from accelerate.utils import ProjectConfiguration

    return {
        "log_with": cfg.train.report_to or None,
        "project_config": ProjectConfiguration(project_dir=str(run.path), logging_dir=str(run.logs)),
    }


def start_trackers(accelerator, run: RunDir, cfg: Config, breakdown: Breakdown) -> None:
    """Start the configured trackers with the run's hyperparameters (main process only, as Accelerate does)."""
    if not cfg.train.report_to:
        return
    logs = run.logs
    if "mlflow" in cfg.train.report_to and not os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow

        # MLflow's default store is in the working directory: keep a run's records inside the run.
        logs.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(f"sqlite:///{(logs / 'mlflow.db').resolve()}")
    init_kwargs = {
        "wandb": {"dir": str(logs), "name": cfg.output.name},
        "mlflow": {"run_name": cfg.output.name},
    }
    accelerator.init_trackers(
        cfg.output.name,
        config=hyperparameters(cfg, breakdown),
        init_kwargs={k: init_kwargs[k] for k in init_kwargs if k in cfg.train.report_to},
    )
