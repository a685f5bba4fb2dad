"""The run directory: the one place that knows what a run holds on disk, typed, written atomically.

config.yaml            the resolved Config
metrics.jsonl          one row per log or evaluation
summary.json           Summary: written last, so its presence means the run finished
failure.txt            the one line a failed trial of a sweep ended with (gone once it trains again)
origin.json            Origin: which sweep or import a run came from (optional)
data.json              DataIdentity: hashes of the data and of the validation rows the run was trained on
owner.json             the process that trains (or last trained) the run; the lock itself is an OS lock on
                       the folder, held while it trains and released by the kernel however the process ends
best/, last/           PEFT adapters (LoRA weights and trained head) + frozen_weights.safetensors
                       (weights the base checkpoint lacks, drawn at random and frozen, which the
                       adapter was trained on top of) + val_predictions.json (Predictions) + decision.json
                       (Decision: thresholds or target scaling);
                       for model.finetune: full, the whole model (config.json, model.safetensors)
checkpoint/            adapter/ (as above) and state.pt (optimizer, scheduler, RNG, LoopState)
eval/<data>-<which>/   what `loralab eval` wrote
logs/                  what train.report_to's trackers write
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import random
import re
import shutil
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import strictjson
from ..config import Config
from ..data import DataIdentity
from ..errors import LoralabError
from ..methods import METHODS, method_of
from ..tasks import Decision
from .files import disk_full, megabytes, no_space, replace_dir, write_json_atomic, write_text_atomic
from .frozen import load_frozen_into, read_frozen, save_frozen

if TYPE_CHECKING:  # torch loads with the first model, not to read a run's files (loralab runs, report)
    import torch

# The file that marks a folder as holding an adapter: each method's config, or a whole model's (full fine-tuning).
ADAPTER_MARKS = (*dict.fromkeys(method.files[0] for method in METHODS.values()), "config.json")
VAL_PREDICTIONS = "val_predictions.json"
DECISION = "decision.json"
ADAPTERS = ("best", "last")


def safe_dirname(name: str) -> str:
    """A folder name from a run's label: commas, '*', '=' and spaces are legal but awkward in paths."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _from_json(cls, data: dict, where: Path):
    """A dataclass from a JSON object; keys it does not know (from a newer version) are ignored."""
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as err:
        raise LoralabError(f"{where}: not a loralab {cls.__name__.lower()} ({err})") from err


def _read_json(path: Path) -> dict:
    try:
        data = strictjson.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LoralabError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise LoralabError(f"{path}: expected a JSON object")
    return data


@dataclass
class Summary:
    """summary.json: what a finished run found, and how it ran."""

    name: str
    peak_val_accuracy: float | None  # a single-label run's accuracy at its peak; None for other tasks
    peak_step: int
    final: dict | None  # the last evaluation: step, loss and the task's metrics
    steps_done: int
    val_rows: int
    trainable: dict | None  # Breakdown.as_dict(); None for an import whose model config was unreadable
    stopped_early: bool = False
    wall_time_s: float | None = None
    train_samples_per_s: float | None = None
    versions: dict = field(default_factory=dict)
    git_commit: str | None = None
    imported_from: str | None = None  # the trainer_state.json of an imported run
    metric: str = "accuracy"  # train.metric_for_best: what picked the peak
    peak: float | None = None  # its value at the peak (runs before 0.3: peak_val_accuracy)
    peak_95ci: list[float] | None = None  # its 95% interval on the validation rows
    precision: dict | None = None  # train.precision as resolved on the device: asked, used, reason
    machine: dict | None = None  # where the samples/s were measured: CPU, threads, GPU, versions
    temperature: dict | None = None  # train.calibrate: the best adapter's temperature and the rows it was fitted on

    @property
    def peak_value(self) -> float:
        return self.peak if self.peak is not None else self.peak_val_accuracy


@dataclass
class Origin:
    """origin.json: where a run came from, for grouping runs in tables and figures."""

    group: str = ""
    axes: dict[str, Any] = field(default_factory=dict)  # the config keys its sweep varied, with values
    sweep: str | None = None
    key: str | None = None  # group/label inside the sweep
    imported_from: str | None = None


@dataclass
class Predictions:
    """val_predictions.json: the label predicted for every validation row at one evaluation."""

    step: int
    labels: list  # the task's targets: class indices, multi-hot lists or numbers
    predictions: list
    scores: list | None = None  # the probabilities behind them (none for a regression, or before loralab 0.3)


@dataclass
class LoopState:
    """What the training loop carries from step to step; a checkpoint saves it (the step is the data position)."""

    step: int = 0
    best_score: float | None = None  # of train.metric_for_best
    best_step: int = 0
    evals_since_best: int = 0
    last_eval: dict | None = None
    stopped_early: bool = False
    train_time_s: float = 0.0
    elapsed_s: float = 0.0


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fill_adapter(folder: Path, model, frozen: dict[str, torch.Tensor]) -> None:
    with warnings.catch_warnings():
        # AdaLoRA may prune a layer to rank 0; PEFT takes its empty tensors for unsharded DeepSpeed ones and says so.
        warnings.filterwarnings("ignore", message=r".*LoRA tensor\(s\) have invalid shape")
        model.save_pretrained(folder)
    save_frozen(folder, frozen)


def read_config_file(path: Path) -> Config:
    """A saved configuration (a run's config.yaml, an export's loralab.yaml), through the dataclasses, so one
    saved before a field existed reads with that field's default."""
    from .. import config as config_io

    return config_io.from_dict(config_io.read_yaml(path))


def write_config_file(path: Path, cfg: Config) -> None:
    import yaml

    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_decision_file(path: Path) -> Decision:
    """The thresholds or target scaling saved with an adapter or an export (none before loralab 0.3: the defaults)."""
    return _from_json(Decision, _read_json(path), path) if path.exists() else Decision()


@dataclass(frozen=True)
class RunDir:
    """One run directory (layout in this module's docstring)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def failure(self) -> Path:
        return self.path / "failure.txt"

    @property
    def origin(self) -> Path:
        return self.path / "origin.json"

    @property
    def data(self) -> Path:
        return self.path / "data.json"

    @property
    def owner(self) -> Path:
        return self.path / "owner.json"

    @property
    def logs(self) -> Path:
        """The experiment trackers' files (TensorBoard, MLflow's store, W&B), unless their settings say otherwise."""
        return self.path / "logs"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def last(self) -> Path:
        return self.path / "last"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    def clean_interrupted_writes(self) -> None:
        """Finish or drop what an interrupted replace_dir left: a `.NAME.old` whose NAME is gone is put
        back (the kill fell between the two renames); temporary `.NAME.*` folders are removed."""
        for old in self.path.glob(".*.old"):
            target = self.path / old.name[1 : -len(".old")]
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, target)
        for folder in ADAPTERS + ("checkpoint",):
            for partial in self.path.glob(f".{folder}.*"):
                if partial.is_dir():
                    shutil.rmtree(partial, ignore_errors=True)

    @classmethod
    def for_config(cls, cfg: Config) -> RunDir:
        """Where a configuration's run lives: output.dir/output.name."""
        return cls(Path(cfg.output.dir) / cfg.output.name)

    # --- one writer at a time ------------------------------------------------------------------

    @contextmanager
    def lock(self):
        """Hold the run directory's OS lock (an flock on the folder itself, so taking it writes nothing).
        A second writer is refused at once, naming the holder; the kernel releases the lock when the
        holding process ends, killed or not, so a killed run can be resumed straight away."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LoralabError(
                    f"run {self.path} is being trained by {self.holder()}: wait for it to finish or stop it "
                    "(a stopped run continues with --resume); two writers would mix their steps in one run"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def write_owner(self) -> None:
        """Who holds the lock, for the message a second writer gets."""
        command = " ".join(["loralab", *sys.argv[1:]]) if sys.argv else "loralab"
        write_json_atomic(
            self.owner, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": command}
        )

    def holder(self) -> str:
        try:
            owner = json.loads(self.owner.read_text())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"]))
            return f"process {owner['pid']} on {owner['host']} (`{owner['command']}`, since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def eval_dir(self, tag: str) -> Path:
        return self.path / "eval" / tag

    # --- config, summary, origin ---------------------------------------------------------------

    def read_config(self) -> Config:
        if not self.config.is_file():
            raise LoralabError(f"{self.path} is not a run directory (no config.yaml)")
        return read_config_file(self.config)

    def write_config(self, cfg: Config) -> None:
        write_config_file(self.config, cfg)

    def read_summary(self) -> Summary:
        return _from_json(Summary, _read_json(self.summary), self.summary)

    def write_summary(self, summary: Summary) -> None:
        write_json_atomic(self.summary, dataclasses.asdict(summary))

    def write_failure(self, line: str) -> None:
        write_text_atomic(self.failure, line.rstrip("\n") + "\n")

    def read_origin(self) -> Origin:
        return _from_json(Origin, _read_json(self.origin), self.origin) if self.origin.exists() else Origin()

    def write_origin(self, origin: Origin) -> None:
        write_json_atomic(self.origin, dataclasses.asdict(origin))

    def read_data_identity(self) -> DataIdentity | None:
        """None for a run saved before loralab recorded its data."""
        return _from_json(DataIdentity, _read_json(self.data), self.data) if self.data.exists() else None

    def write_data_identity(self, identity: DataIdentity) -> None:
        write_json_atomic(self.data, dataclasses.asdict(identity))

    # --- metrics -------------------------------------------------------------------------------

    def append_metrics(self, row: dict) -> None:
        line = strictjson.dumps(row) + "\n"
        try:
            with open(self.metrics, "a") as handle:
                handle.write(line)
        except OSError as err:
            if no_space(err):
                raise disk_full(self.metrics, megabytes(len(line))) from None
            raise

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        lines = [line for line in self.metrics.read_text().splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                rows.append(strictjson.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise LoralabError(f"{self.metrics}: line {number} is not JSON") from None
                # The last line of a write cut short (a full disk, a kill): resume logs it again.
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows logged after `last_step`: a resumed run logs those steps again."""
        kept = [row for row in self.read_metrics() if row["step"] <= last_step]
        write_text_atomic(self.metrics, "".join(strictjson.dumps(row) + "\n" for row in kept))

    # --- adapters and predictions --------------------------------------------------------------

    def save_adapter(
        self, which: str, model, frozen: dict[str, torch.Tensor], predictions: Predictions, decision: Decision
    ) -> None:
        """PEFT's save_pretrained, the frozen weights it was trained on, the predictions and what turned
        logits into them (decision.json), swapped in whole."""

        def fill(tmp: Path) -> None:
            _fill_adapter(tmp, model, frozen)
            write_json_atomic(tmp / VAL_PREDICTIONS, dataclasses.asdict(predictions))
            write_json_atomic(tmp / DECISION, dataclasses.asdict(decision))

        replace_dir(self.path / which, fill)

    def adapter(self, which: str = "best") -> Path:
        """The folder of the `which` adapter, checked to hold one."""
        if not self.config.is_file():
            raise LoralabError(f"{self.path} is not a run directory (no config.yaml)")
        folder = self.path / which
        if not any((folder / name).is_file() for name in ADAPTER_MARKS):
            raise LoralabError(f"run {self.path} has no adapter in {which}/ (did it finish an evaluation?)")
        return folder

    def trained_precision(self) -> str | None:
        """The precision the run trained in (what ran, not the setting), where its record says it: a finished
        run's summary, or an explicit train.precision; None for an unfinished `auto` run."""
        if self.summary.is_file() and (precision := self.read_summary().precision):
            return precision["used"]
        asked = self.read_config().train.precision
        return None if asked == "auto" else asked

    def read_decision(self, which: str = "best") -> Decision:
        return read_decision_file(self.path / which / DECISION)

    def read_predictions(self, which: str = "best") -> Predictions | None:
        path = self.path / which / VAL_PREDICTIONS
        return _from_json(Predictions, _read_json(path), path) if path.exists() else None

    # --- checkpoint ----------------------------------------------------------------------------

    def save_checkpoint(self, model, frozen: dict[str, torch.Tensor], optimizer, scheduler, state: LoopState) -> None:
        import torch

        def fill(tmp: Path) -> None:
            _fill_adapter(tmp / "adapter", model, frozen)
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "loop": dataclasses.asdict(state),
                },
                tmp / "state.pt",
            )

        replace_dir(self.checkpoint, fill)

    def load_checkpoint(self, model, optimizer, scheduler) -> LoopState:
        """Restore adapter, frozen weights, optimizer, scheduler and RNG; returns the loop state."""
        from safetensors.torch import load_file

        folder = self.checkpoint / "adapter"
        frozen = read_frozen(folder)
        if frozen:
            load_frozen_into(model.get_base_model(), frozen)
        cfg = self.read_config()
        if cfg.model.finetune == "full":  # the checkpoint holds the whole model
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        else:
            method_of(cfg).restore(model, folder)
        import torch

        saved = torch.load(self.checkpoint / "state.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"])
        # Checkpoints written before LoopState kept its fields at the top level.
        loop = saved.get("loop") or {k: v for k, v in saved.items() if k not in ("optimizer", "scheduler", "rng")}
        if "best_accuracy" in loop:  # checkpoints before metric_for_best
            loop["best_score"] = loop.pop("best_accuracy")
        return LoopState(**{k: v for k, v in loop.items() if k in {f.name for f in dataclasses.fields(LoopState)}})


def finished_runs_under(path: Path) -> list[RunDir]:
    """The finished runs (config.yaml and summary.json) at or below `path`, in path order."""
    candidates = (
        [RunDir(path)]
        if RunDir(path).summary.exists()
        else [RunDir(p.parent) for p in sorted(path.rglob("summary.json"))]
    )
    return [run for run in candidates if run.config.exists()]
