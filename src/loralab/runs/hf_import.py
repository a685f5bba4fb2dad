"""Importing Hugging Face `Trainer` results (trainer_state.json + PEFT adapter_config.json) as run directories."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from .. import config as config_io
from ..budget.count import breakdown_for, shapes_for
from ..budget.scope import canonical_scope
from ..config import Config
from ..errors import LoralabError
from .files import make_dir, replace_dir
from .rundir import Origin, RunDir, Summary, safe_dirname

# The seed study kept one folder per question; each folder's runs differ along one axis.
STUDY_FOLDER_AXES = {
    "modules": "lora.scope",
    "dropout": "lora.dropout",
    "a": "lora.alpha",
    "alpha": "lora.alpha",
    "r": "lora.r",
    "lr": "train.lr",
}


def find_pairs(paths: list[str]) -> list[tuple[Path, Path]]:
    """(trainer_state, adapter_config) pairs: `X_trainer.json` beside `X_adapter.json`, or the
    `trainer_state.json` / `adapter_config.json` of a checkpoint folder."""
    pairs = []
    for path in map(Path, paths):
        if not path.exists():
            raise LoralabError(f"no such file or folder: {path}")
        states = (
            [path]
            if path.is_file()
            else sorted(
                p for p in path.rglob("*.json") if p.name == "trainer_state.json" or p.name.endswith("_trainer.json")
            )
        )
        for state in states:
            if state.name == "trainer_state.json":
                adapter = state.with_name("adapter_config.json")
            elif state.name.endswith("_trainer.json"):
                adapter = state.with_name(state.name[: -len("_trainer.json")] + "_adapter.json")
            else:
                raise LoralabError(f"{state}: expected trainer_state.json or a file named *_trainer.json")
            if not adapter.exists():
                raise LoralabError(f"{state}: no adapter config beside it (looked for {adapter.name})")
            pairs.append((state, adapter))
    if not pairs:
        raise LoralabError(f"no trainer_state.json or *_trainer.json under {', '.join(paths)}")
    return pairs


def run_name(state: Path) -> str:
    stem = state.parent.name if state.name == "trainer_state.json" else state.name[: -len("_trainer.json")]
    return stem


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoralabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err


def to_run(state_path: Path, adapter_path: Path, val_rows: int, model_config_source: str | None):
    """The run's config, metrics, summary and origin, rebuilt from the Trainer's files."""
    state, adapter = _read_json(state_path), _read_json(adapter_path)
    history = state.get("log_history")
    if not isinstance(history, list):
        raise LoralabError(f"{state_path}: no log_history (is this a Trainer state file?)")
    evals = [e for e in history if "eval_accuracy" in e]
    if not evals:
        raise LoralabError(f"{state_path}: no eval_accuracy in log_history")
    group = state_path.parent.name
    name = f"{group}/{run_name(state_path)}"
    learning_rates = [e["learning_rate"] for e in history if "learning_rate" in e]
    cfg = config_io.from_dict(
        {
            "model": {"name": adapter.get("base_model_name_or_path") or "unknown"},
            "lora": {
                "scope": canonical_scope(list(adapter["target_modules"])),
                "r": adapter["r"],
                "alpha": adapter["lora_alpha"],
                "dropout": adapter["lora_dropout"],
            },
            "data": {"val_size": val_rows},
            "train": {
                # The Trainer logs the learning rate it used; after warmup its largest value is the peak.
                "lr": max(learning_rates) if learning_rates else 5e-5,
                "steps": state.get("max_steps") or state["global_step"],
                "batch_size": state.get("train_batch_size") or 16,
                "eval_every": state.get("eval_steps") or 100,
                "log_every": state.get("logging_steps") or 100,
            },
            "output": {"name": safe_dirname(name)},
        }
    )
    metrics = [
        {"step": e["step"], "split": "train", "loss": e["loss"], "lr": e.get("learning_rate")}
        for e in history
        if "loss" in e
    ] + [
        {
            "step": e["step"],
            "split": "val",
            "loss": e.get("eval_loss"),
            "accuracy": e["eval_accuracy"],
            "f1": e.get("eval_f1"),
        }
        for e in evals
    ]
    metrics.sort(key=lambda r: (r["step"], r["split"] == "val"))
    peak = max(evals, key=lambda e: e["eval_accuracy"])  # max() keeps the first of equal values: the earliest step
    last = evals[-1]
    summary = Summary(
        name=name,
        peak_val_accuracy=peak["eval_accuracy"],
        peak_step=peak["step"],
        final={
            "step": last["step"],
            "loss": last.get("eval_loss"),
            "accuracy": last["eval_accuracy"],
            "f1": last.get("eval_f1"),
        },
        steps_done=state["global_step"],
        val_rows=val_rows,
        trainable=trainable_for(cfg, model_config_source),
        wall_time_s=next((e["train_runtime"] for e in history if "train_runtime" in e), None),
        imported_from=str(state_path),
    )
    axis = STUDY_FOLDER_AXES.get(group)
    axes = {axis: _axis_value(cfg, axis)} if axis else {}
    return cfg, metrics, summary, Origin(group=group, axes=axes, imported_from=str(state_path))


def _axis_value(cfg: Config, axis: str):
    section, key = axis.split(".")
    return getattr(getattr(cfg, section), key)


def trainable_for(cfg: Config, source: str | None) -> dict | None:
    """The exact breakdown under the base model's config, or None where that config cannot be read."""
    try:
        shapes = shapes_for(replace(cfg, model=replace(cfg.model, name=source or cfg.model.name)))
    except LoralabError:
        return None
    return breakdown_for(cfg, shapes)[0].as_dict()


def import_hf(paths: list[str], out_dir: str, val_rows: int = 640, model_config: str | None = None) -> list[Path]:
    """Write one run directory per Trainer result under out_dir/<group>/<name>."""
    pairs = find_pairs(paths)
    built = [to_run(state, adapter, val_rows, model_config) for state, adapter in pairs]
    written = []
    for cfg, metrics, summary, origin in built:
        group, stem = summary.name.split("/", 1)
        run = RunDir(Path(out_dir) / safe_dirname(group) / safe_dirname(stem))
        make_dir(run.path.parent)

        def fill(tmp: Path, cfg=cfg, metrics=metrics, summary=summary, origin=origin) -> None:
            staged = RunDir(tmp)
            staged.write_config(cfg)
            for row in metrics:
                staged.append_metrics(row)
            staged.write_summary(summary)
            staged.write_origin(origin)

        replace_dir(run.path, fill)
        written.append(run.path)
    return written
