"""The served models: which runs and exports, under which names, sharing which forward pass (model groups:
one base with every run's adapter beside it, or one ONNX export), and what /v1/adapters tells of each."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..config import Config
from ..encoding import Encoded
from ..errors import LoralabError
from ..methods import method_of
from ..modeling.model import with_base
from ..options import ServeOptions
from ..runs.frozen import same_frozen
from ..runs.rundir import RunDir
from ..tasks import Decision, task_for
from .engine import EXPORT_RECORD, ONNX_FILE, OnnxEngine, TorchEngine, is_onnx_export, open_engine, set_threads
from .stacked import restack


class ModelGroup:
    """Adapters that share one forward pass: here one ONNX export, or one run alone on its base."""

    mixed = False

    def __init__(self, engine: TorchEngine | OnnxEngine):
        self.engine = engine

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
    peft_name: str = "default"
    group: ModelGroup | None = None
    info: dict = field(default_factory=dict)
    in_flight: int = 0  # requests holding it, from their parsing to their answer: a removal waits for none

    @property
    def task(self):
        return task_for(self.cfg)

    @property
    def outputs(self) -> int:
        """Its head's outputs: the first columns of its group's logits (a shared base is as wide as the widest)."""
        return len(self.cfg.data.label_names)


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


def alone_only(adapter: Adapter) -> str | None:
    """Why a run cannot sit beside other adapters on one base (None: it can)."""
    cfg, run = adapter.cfg, adapter.run
    if cfg.model.finetune == "full":
        return f"{run} is a full fine-tuning (no adapter to put beside others): serve it alone"
    why = method_of(cfg).why_alone(cfg)
    return None if why is None else f"{run} is {why}: serve it alone"


def sharing_problem(first: Adapter, other: Adapter, which: str) -> str | None:
    """Why `other` cannot be served beside `first` on one copy of the base model (None: it can). Label
    counts and tasks may differ: each adapter has its own head, read from the first columns of the pass."""
    for adapter in (first, other):
        if problem := alone_only(adapter):
            return problem
    a, b = first.cfg, other.cfg
    both = f"{first.run} and {other.run}"
    if a.model.name != b.model.name:
        return f"{both} have different bases ({a.model.name}, {b.model.name}): run one server for each"
    if a.model.pooling != b.model.pooling:
        return f"{both} pool differently ({a.model.pooling}, {b.model.pooling}): run one server for each"
    if a.model.head != b.model.head:  # PEFT's trained copies of the head's layers exist only where trained
        return f"{both} train different parts of the head (model.head: {a.model.head}, {b.model.head})"
    if not same_frozen(RunDir(first.run).adapter(which), RunDir(other.run).adapter(which)):
        return (
            f"{both} were trained on different frozen random head weights (model.head: "
            f"{a.model.head}), which the base holds once: run one server for each"
        )
    return None


def zero_rows(value: torch.Tensor, rows: int) -> torch.Tensor:
    """`value` with zero rows appended up to `rows`: an output layer widened without changing its outputs."""
    return torch.cat([value, value.new_zeros(rows - value.shape[0], *value.shape[1:])])


class SharedBase(ModelGroup):
    """One copy of a base model with every run's adapter and trained head beside it under its own PEFT name;
    each row of a pass goes through its own adapter (PEFT's mixed-adapter batches).

    Heads of different sizes share the pass: the output layer of every head is padded with zero rows to the
    widest one's outputs (PEFT stacks the heads' answers, so they must be one width), and each adapter reads
    its own first columns. Adapters are added and removed only on the forward thread, between passes."""

    mixed = True

    def __init__(self, founder: Adapter, width: int, options: ServeOptions):
        from peft import PeftModel

        from ..budget.count import shapes_for
        from ..budget.scope import family_of
        from ..modeling.model import base_for_adapter, load_tokenizer

        self.founder, self.which = founder, options.which  # every later adapter must share what founded it
        cfg = founder.cfg
        self.head_out = family_of(shapes_for(cfg).model_type).head_out
        self.width = width
        self.retired: list[str] = []  # PEFT names removed from service but still in the model (see detach)
        config, weights = self.read(founder)
        base = base_for_adapter(cfg, RunDir(founder.run).adapter(self.which), num_labels=width)
        model = PeftModel(base, config, adapter_name=founder.peft_name)
        self._load(model, founder, weights)
        tokenizer, trained = load_tokenizer(cfg.model.name), RunDir(founder.run).trained_precision()
        super().__init__(TorchEngine(cfg, founder.decision, tokenizer, model, options.precision, trained))
        restack(model)  # once the engine has cast and moved the weights: the stacks are built from them
        founder.group = self

    def read(self, adapter: Adapter):
        """The adapter's PEFT config and weights from disk, its output layer padded to this base's width
        (any thread: nothing of the model is touched)."""
        from peft import PeftConfig
        from peft.utils import load_peft_weights

        folder = RunDir(adapter.run).adapter(self.which)
        config = PeftConfig.from_pretrained(str(folder))
        config.inference_mode = True
        weights = load_peft_weights(str(folder), device="cpu")
        return config, weights

    def _padded(self, weights: dict, width: int) -> dict:
        head = f"base_model.model.{self.head_out}"
        return {key: zero_rows(value, width) if key in (f"{head}.weight", f"{head}.bias") else value
                for key, value in weights.items()}  # fmt: skip

    def _load(self, model, adapter: Adapter, weights: dict) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, self._padded(weights, self.width), adapter_name=adapter.peft_name)

    def _widen(self, width: int) -> None:
        """Every head's output layer (and the base's own) padded to `width` outputs."""
        wrapper = self.engine.model.base_model.model.get_submodule(self.head_out)
        for linear in [wrapper.original_module, *wrapper.modules_to_save.values()]:
            linear.weight = torch.nn.Parameter(zero_rows(linear.weight.detach(), width), requires_grad=False)
            if linear.bias is not None:
                linear.bias = torch.nn.Parameter(zero_rows(linear.bias.detach(), width), requires_grad=False)
            linear.out_features = width
        self.engine.model.base_model.model.config.num_labels = width
        self.width = width

    def attach(self, adapter: Adapter, config, weights: dict) -> None:
        """Put a read adapter beside the others (on the forward thread)."""
        from ..modeling.model import cast_frozen_linears

        model = self.engine.model
        if adapter.outputs > self.width:
            self._widen(adapter.outputs)
        model.add_adapter(adapter.peft_name, config)
        self._load(model, adapter, weights)
        model.requires_grad_(False)
        cast_frozen_linears(model, self.engine.precision.used)
        model.to(self.engine.device).eval()
        adapter.group = self
        for name in self.retired:  # a last adapter kept until another came: now it can go
            self._delete(name)
        self.retired = []
        restack(model)

    def detach(self, adapter: Adapter) -> None:
        """Free an adapter's weights (on the forward thread, once no request holds it). PEFT cannot take a new
        adapter into a model left with none, so the last one stays resident until the next one arrives."""
        if len(self.engine.model.peft_config) - len(self.retired) == 1:
            self.retired.append(adapter.peft_name)
        else:
            self._delete(adapter.peft_name)
            restack(self.engine.model)

    def _delete(self, name: str) -> None:
        model = self.engine.model
        if name in model.active_adapters:  # another made active first: PEFT would warn that it picked one
            model.set_adapter(next(other for other in model.peft_config if other != name and other not in self.retired))
        model.delete_adapter(name)


# --- the models -----------------------------------------------------------------------------------------


class Classifiers:
    """The served adapters (runs on one shared base, ONNX exports beside them), the forward pass over a batch
    of rows for any of them, and what adds or removes one while serving."""

    def __init__(self, options: ServeOptions):
        set_threads(options.threads)
        self.options = options
        self.adapters: dict[str, Adapter] = {}
        self.shared: SharedBase | None = None
        self._names = 0  # PEFT names handed out: never reused, so a removed adapter's name cannot come back
        runs = named_runs(options.runs)
        for name, path in runs:  # each ONNX export: a model of its own in ONNX Runtime
            if is_onnx_export(path):
                self.adapters[name] = self.read_export(name, path)
        trained = [self.read_run(name, path) for name, path in runs if not is_onnx_export(path)]
        if len(trained) == 1 and not options.admin_token:  # alone for good: as predict runs it
            self._load_alone(trained[0])
        elif trained:
            for adapter in trained[1:]:
                if problem := sharing_problem(trained[0], adapter, options.which):
                    raise LoralabError(f"serve: {problem}")
            if problem := alone_only(trained[0]):
                raise LoralabError(f"serve: {problem} (without --admin-token)")
            self.shared = SharedBase(trained[0], max(a.outputs for a in trained), options)
            for adapter in trained[1:]:
                self.shared.attach(adapter, *self.shared.read(adapter))
        for adapter in trained:
            self.adapters[adapter.name] = adapter
        for adapter in self.adapters.values():
            adapter.info = adapter_info(adapter)

    def read_run(self, name: str, run: Path) -> Adapter:
        store = RunDir(run)
        peft_name = f"a{self._names}"
        self._names += 1
        cfg = with_base(store.read_config(), run, self.options.base_model)
        return Adapter(name, run, cfg, store.read_decision(self.options.which), peft_name)

    def read_export(self, name: str, path: Path) -> Adapter:
        engine = OnnxEngine(path, self.options.threads)
        return Adapter(name, path, engine.cfg, engine.decision, "default", ModelGroup(engine))

    def _load_alone(self, adapter: Adapter) -> None:
        options = self.options
        adapter.group = ModelGroup(open_engine(adapter.run, options.which, options.precision, options.base_model))

    def prepare(self, name: str, path: Path):
        """Everything of adding an adapter that can run beside the forward passes: its files read and checked,
        an ONNX export's session opened. Returns the adapter and what puts it in its model (to call on the
        forward thread). LoralabError: it cannot be served here, and why."""
        if name in self.adapters:
            raise LoralabError(f"an adapter named '{name}' is already served: remove it first, or choose another name")
        if is_onnx_export(path):
            adapter = self.read_export(name, path)
            return adapter, lambda: None
        if not RunDir(path).summary.is_file():
            raise LoralabError(f"{path} is neither a finished run (no summary.json) nor an ONNX export")
        adapter = self.read_run(name, path)
        if self.shared is None:
            raise LoralabError("this server has no shared base to add a run to: start it with a run and --admin-token")
        if problem := sharing_problem(self.shared.founder, adapter, self.options.which):
            raise LoralabError(problem)
        config, weights = self.shared.read(adapter)
        return adapter, lambda: self.shared.attach(adapter, config, weights)

    def remover(self, adapter: Adapter):
        """What frees a removed adapter's weights (to call on the forward thread, once no request holds it)."""
        if adapter.group is self.shared:
            return lambda: self.shared.detach(adapter)
        return lambda: None  # an ONNX export's session goes with its last reference

    def groups(self) -> list[ModelGroup]:
        return list({id(a.group): a.group for a in self.adapters.values()}.values())

    def encode(self, adapter: Adapter, texts: list[str], pairs: list[str] | None) -> Encoded:
        """Token ids as the run was trained (its own max_length and chunking); called off the event loop."""
        return adapter.group.engine.encode(texts, pairs, adapter.cfg.data)

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
        "text_pairs": bool(adapter.cfg.data.text_pair_column),  # whether a request must send "text_pairs"
        **adapter.group.engine.describe(),
        "shared_base": adapter.group.mixed,  # one copy of the base, in a pass with the other shared adapters
        "loaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
