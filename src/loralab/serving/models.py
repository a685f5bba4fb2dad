"""The served models: which runs and exports, under which names, sharing which forward pass (model groups:
one base with every run's adapter beside it, or one ONNX export), and what /v1/adapters tells of each."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..data import Encoded
from ..errors import LoralabError
from ..modeling.model import load_trained
from ..options import ServeOptions
from ..runs.rundir import RunDir, read_frozen
from ..tasks import Decision, task_for
from .engine import EXPORT_RECORD, ONNX_FILE, OnnxEngine, TorchEngine, is_onnx_export, set_threads


class ModelGroup:
    """Adapters that share one forward pass: one base with every run's adapter beside it (PyTorch), or one
    ONNX export. A batch of rows for several groups runs one pass per group."""

    def __init__(self, engine: TorchEngine | OnnxEngine, mixed: bool):
        self.engine, self.mixed = engine, mixed

    def logits(self, data: Encoded, peft_names: list[str], options: ServeOptions) -> torch.Tensor:
        names = peft_names if self.mixed else None
        return self.engine.logits(data, options.max_batch, names, options.max_tokens)


@dataclass
class Adapter:
    """One served run or export: its public name, its model group, the name PEFT knows it by there, and
    what turns its logits into answers."""

    name: str
    run: Path
    cfg: Config
    decision: Decision
    peft_name: str
    group: ModelGroup | None = None
    info: dict = field(default_factory=dict)

    @property
    def task(self):
        return task_for(self.cfg)


# --- which runs, under which names --------------------------------------------------------------------


def named_runs(specs: list[str]) -> list[tuple[str, Path]]:
    """`RUN` or `NAME=RUN` for each argument; every run finished, every name once."""
    named: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        run = Path(path if sep else spec)
        name = name if sep else run.resolve().name
        if not name:
            raise LoralabError(f"serve: '{spec}' names no adapter: give NAME=RUN or the run directory alone")
        if not RunDir(run).summary.is_file() and not is_onnx_export(run):
            raise LoralabError(
                f"serve: {run} is neither a finished run (no summary.json) nor an ONNX export (no {ONNX_FILE}): "
                "train it, or name runs/NAME or an export folder"
            )
        if any(name == seen for seen, _ in named):
            raise LoralabError(f"serve: the adapter name '{name}' is given twice: name them apart, e.g. {name}-2={run}")
        named.append((name, run))
    return named


def sharing_problem(first: Adapter, other: Adapter, which: str) -> str | None:
    """Why `other` cannot be served beside `first` on one copy of the base model (None: it can)."""
    a, b = first.cfg, other.cfg
    for cfg, run in ((a, first.run), (b, other.run)):
        if cfg.model.finetune == "full":
            return f"{run} is a full fine-tuning (no adapter to put beside others): serve it alone"
        if cfg.lora.use_dora:
            return f"{run} uses DoRA, which PEFT cannot mix with other adapters in one batch: serve it alone"
        if cfg.lora.bias != "none":
            return f"{run} trained the base model's biases (lora.bias: {cfg.lora.bias}), shared here: serve it alone"
    both = f"{first.run} and {other.run}"
    if a.model.name != b.model.name:
        return f"{both} have different bases ({a.model.name}, {b.model.name}): run one server for each"
    if a.model.pooling != b.model.pooling:
        return f"{both} pool differently ({a.model.pooling}, {b.model.pooling}): run one server for each"
    if len(a.data.label_names) != len(b.data.label_names):  # a regression's one output is named too
        return f"{both} have heads of different sizes: run one server for each"
    mine, theirs = read_frozen(RunDir(first.run).adapter(which)), read_frozen(RunDir(other.run).adapter(which))
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k]) for k in mine):
        return (
            f"{both} were trained on different frozen random head weights (model.head: "
            f"{a.model.head}), which the base holds once: run one server for each"
        )
    return None


# --- the models -----------------------------------------------------------------------------------------


class Classifiers:
    """The served runs on one base, and the forward pass over a batch of rows for any of them."""

    def __init__(self, options: ServeOptions):
        set_threads(options.threads)
        runs = named_runs(options.runs)
        self.options = options
        self.adapters: dict[str, Adapter] = {}
        # Each ONNX export: a model of its own in ONNX Runtime.
        for name, path in runs:
            if is_onnx_export(path):
                engine = OnnxEngine(path, options.threads)
                group = ModelGroup(engine, mixed=False)
                self.adapters[name] = Adapter(name, path, engine.cfg, engine.decision, "default", group)
        trained = [(name, path) for name, path in runs if not is_onnx_export(path)]
        for i, (name, run) in enumerate(trained):
            store = RunDir(run)
            self.adapters[name] = Adapter(
                name, run, store.read_config(), store.read_decision(options.which), "default" if i == 0 else f"a{i}"
            )
        if trained:
            self._load_runs([self.adapters[name] for name, _ in trained])
        for adapter in self.adapters.values():
            adapter.info = adapter_info(adapter)

    def _load_runs(self, adapters: list[Adapter]) -> None:
        """The runs on one base: one copy of it, each adapter beside it (one run alone: merged)."""
        options = self.options
        first = adapters[0]
        for adapter in adapters[1:]:
            problem = sharing_problem(first, adapter, options.which)
            if problem:
                raise LoralabError(f"serve: {problem}")
        mixed = len(adapters) > 1
        cfg, tokenizer, model = load_trained(first.run, options.which, merged=not mixed, base_model=options.base_model)
        for adapter in adapters[1:]:
            model.load_adapter(RunDir(adapter.run).adapter(options.which), adapter_name=adapter.peft_name)
        group = ModelGroup(TorchEngine(cfg, first.decision, tokenizer, model, options.precision), mixed)
        for adapter in adapters:
            adapter.group = group

    def groups(self) -> list[ModelGroup]:
        return list({id(a.group): a.group for a in self.adapters.values()}.values())

    def encode(self, adapter: Adapter, texts: list[str], pairs: list[str] | None) -> Encoded:
        """Token ids as the run was trained (its own max_length); called off the event loop."""
        return adapter.group.engine.encode(texts, pairs, adapter.cfg.data.max_length)

    def answer(self, adapter: Adapter, logits: torch.Tensor, probabilities: bool) -> dict:
        scored = adapter.task.score(logits, adapter.decision)
        names = adapter.cfg.data.label_names
        out = {"labels": [adapter.task.answer(p, names) for p in scored.predictions]}
        if probabilities and adapter.task.probabilities:
            out["probabilities"] = [dict(zip(names, [round(x, 6) for x in row])) for row in scored.scores]
        return out


def adapter_info(adapter: Adapter) -> dict:
    """What /v1/adapters tells of one adapter: where it comes from, its task, how it runs, how it scored."""
    info = {
        "name": adapter.name,
        "run": str(adapter.run),
        "base": adapter.cfg.model.name,
        "task": adapter.cfg.data.task,
        "labels": adapter.cfg.data.label_names,
        **adapter.group.engine.describe(),
    }
    if is_onnx_export(adapter.run):  # its check against the run's adapter stands for the run's scores
        record = RunDir(adapter.run).path / EXPORT_RECORD
        check = json.loads(record.read_text()).get("check", {}) if record.exists() else {}
        return info | {"trainable": None, "metric": check.get("metric"), "export_check": check.get("export")}
    summary = RunDir(adapter.run).read_summary()
    return info | {
        "trainable": summary.trainable["total"] if summary.trainable else None,
        "metric": summary.metric,
        "peak_validation": summary.peak_value,
        "peak_validation_accuracy": summary.peak_val_accuracy,
    }
