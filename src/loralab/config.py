"""Typed run configuration: dataclasses, YAML loading, `section.key=value` overrides, validation."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import LoralabError
from .fields import doc
from .methods import METHODS
from .tasks import SHAPES

SCOPE_WORDS = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")
HEAD_MODES = ("full", "out_proj", "lora")
POOLINGS = ("first", "mean")
FINETUNE = ("lora", "full")
SCHEDULERS = ("linear", "cosine", "constant")
COMPILE = ("auto", "on", "off")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TASKS = tuple(SHAPES)
# The metrics each task reports (tasks/ decides them); the first picks the peak unless train.metric_for_best
# names another.
TASK_METRICS = {name: shape.metrics for name, shape in SHAPES.items()}
LOWER_IS_BETTER = tuple(sorted({metric for shape in SHAPES.values() for metric in shape.lower_is_better}))
CALIBRATIONS = ("none", "temperature")
LONG_TEXTS = ("truncate", "chunk")
# Accelerate's tracker names -> the module each needs.
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio", "aim": "aim",
            "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}  # fmt: skip
AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


@dataclass
class ModelConfig:
    name: str = doc("Hugging Face hub id or local model folder", "roberta-base")
    head: str = doc("classification head: full (all trainable), out_proj (only the output projection), lora", "full")
    pooling: str = doc(
        "what the head reads: first (token, as Hugging Face heads do) or mean (of the real tokens)", "first"
    )
    finetune: str = doc(
        "lora (adapters and head within lora.budget), or full (every weight trains, no budget: the reference "
        "that shows what the budget costs)",
        "lora",
    )


@dataclass
class AdapterSettings:
    """The settings every method reads; each method's own (LoRA's variants, AdaLoRA's init_r, FourierFT's
    n_frequency) are declared, documented and checked in its file in methods/ and join this section below."""

    method: str = doc(
        f"the parameter-efficient method: {', '.join(METHODS)} (each method's own settings below are refused with "
        "another method)",
        "lora",
    )
    scope: list[str] = doc(
        "modules to adapt: query, key, value, attention_output, ffn_in, ffn_out, or raw module names",
        factory=lambda: ["value"],
    )
    r: int = doc(
        "LoRA rank; VeRA: the rank of its shared random matrices; AdaLoRA: the average rank left after pruning", 22
    )
    alpha: float = doc("LoRA alpha (scaling = alpha / r); FourierFT: its scaling", 44.0)
    dropout: float = doc("dropout on the LoRA input", 0.1)
    layers: list[int] | None = doc("encoder layers to adapt (null: all)", None)
    budget: int = doc("maximum trainable parameters, head included", 1_000_000)


def _lora_section() -> type:
    """The `lora` section: the common settings, then every method's own, one flat section as YAML files and
    `lora.key=value` overrides name them (methods/ declares them: a new method brings its settings with it)."""
    own = []
    for method in METHODS.values():
        if method.options is None:
            continue
        hints = typing.get_type_hints(method.options)
        for f in dataclasses.fields(method.options):
            documented = {"doc": f"{method.name}: {f.metadata['doc']}"}
            own.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory,
                                                        metadata=documented)))  # fmt: skip
    section = dataclasses.make_dataclass("LoraConfig", own, bases=(AdapterSettings,))
    section.__module__ = __name__
    return section


LoraConfig = _lora_section()


@dataclass
class DataConfig:
    train: str = doc("training data: hub dataset id, or a local .csv/.jsonl/.json/.parquet file", "fancyzhx/ag_news")
    subset: str = doc("the hub dataset's configuration (subset), e.g. mrpc of nyu-mll/glue", "")
    task: str = doc(
        "single_label (one class per row), multi_label (any set of classes: a sigmoid per class) or regression "
        "(one number per row); carried to Hugging Face as problem_type",
        "single_label",
    )
    text_column: str = doc("column holding the text", "text")
    text_pair_column: str = doc(
        "column holding a second text (NLI, paraphrase, reranking): tokenized as a pair, the longer side "
        "truncated first (empty: single texts)",
        "",
    )
    label_column: str = doc("column holding the label: a class index, or a class name", "label")
    label_names: list[str] = doc(
        "class names, in label order (empty: from the data: its class names sorted, or 0..K-1 for class indices)",
        factory=list,
    )
    label_separator: str = doc("multi_label: what separates the labels of a row written as one string (CSV)", ",")
    scale_targets: bool = doc(
        "regression: train on targets standardised by the training rows' mean and deviation (saved with the "
        "run; predictions come back in the targets' own units)",
        False,
    )
    validation: str = doc(
        "validation rows from elsewhere instead of holding val_size out: a split of the hub dataset (e.g. "
        "validation, validation_matched) or a labelled file",
        "",
    )
    val_size: int = doc("rows held out of the training data for validation", 640)
    split_seed: int = doc("seed of the train/validation split", 42)
    max_length: int = doc("tokens the model reads at once (a longer text is truncated, or chunked)", 512)
    long_texts: str = doc(
        "truncate: a text longer than max_length is read up to there; chunk: it is read in overlapping windows "
        "of max_length, each trained on with the text's label, their logits averaged per text when answering "
        "(the largest, for multi-label), so every text is answered once, in input order",
        "truncate",
    )
    stride: int | None = doc(
        "with long_texts: chunk, the tokens two neighbouring windows share (null: a quarter of max_length, 32 of 128)",
        None,
    )

    def window_stride(self) -> int:
        """The tokens neighbouring windows share: data.stride where set, else a quarter of max_length."""
        return self.max_length // 4 if self.stride is None else self.stride


@dataclass
class TrainConfig:
    steps: int = doc("optimizer steps (replaced by epochs where that is set)", 1200)
    epochs: float = doc("passes over the training rows, as published recipes give them (0: train.steps)", 0.0)
    batch_size: int = doc("training rows per step (per process, before gradient accumulation)", 16)
    eval_batch_size: int = doc("rows per evaluation batch", 64)
    lr: float = doc("AdamW peak learning rate", 5e-5)
    warmup_steps: int = doc("linear warmup steps before the schedule", 100)
    warmup_ratio: float = doc("warmup as a share of all steps (e.g. 0.06); replaces warmup_steps where > 0", 0.0)
    scheduler: str = doc("learning-rate schedule after warmup: linear, cosine or constant", "linear")
    grad_accum: int = doc("micro-batches accumulated per optimizer step", 1)
    max_grad_norm: float = doc("gradient clipping norm (0: off)", 1.0)
    weight_decay: float = doc("AdamW weight decay", 0.0)
    layer_lr_decay: float = doc(
        "layer-wise learning-rate decay: encoder layer i trains at lr x this^(top layer - i), the head at lr "
        "(1: off; 0.8-0.95 is usual)",
        1.0,
    )
    precision: str = doc(
        "auto (bf16 where the device computes it natively: CUDA with bf16, CPUs with AVX512-BF16 or AMX; fp32 "
        "elsewhere), fp32, or bf16/fp16 autocast (on a device that emulates it: a warning with its measured cost)",
        "auto",
    )
    compile: str = doc(
        "auto, on or off: pad training batches to a few length buckets (chosen from the data's lengths) and compile "
        "the training step with torch.compile, on CUDA as CUDA graphs (one launch per step instead of hundreds); "
        "auto: off, since on the devices measured (an H200, a CPU) compiling cost more than it won back",
        "auto",
    )
    gradient_checkpointing: bool = doc(
        "keep only each layer's input for the backward pass and recompute the rest there: a fraction of the "
        "activation memory (mpnet-base, the study's run: see the README) for about a third more compute; "
        "the same numbers",
        False,
    )
    seed: int = doc("seed for initialisation, dropout and data order", 42)
    eval_every: int = doc("evaluate, checkpoint and log validation metrics every this many steps", 100)
    log_every: int = doc("log training loss every this many steps", 20)
    metric_for_best: str = doc(
        "validation metric that picks the peak (best/, early stopping, sweeps): accuracy, f1_macro, mcc "
        "(single_label); f1_micro, f1_macro, subset_accuracy (multi_label); pearson, spearman, mse (regression); "
        "empty: the task's first",
        "",
    )
    tune_thresholds: bool = doc(
        "multi_label: a decision threshold per label, chosen on the validation rows for its F1 (else 0.5)", False
    )
    calibrate: str = doc(
        "temperature: at each evaluation, one temperature fitted on the validation rows so that the probabilities "
        "mean what they say (saved in decision.json; predict, serve and exports apply it; no label changes); none",
        "none",
    )
    early_stopping_patience: int = doc("stop after this many evaluations without a new best metric (0: off)", 0)
    label_smoothing: float = doc("cross-entropy label smoothing", 0.0)
    class_weights: list[float] | None = doc("cross-entropy weight of each class (null: equal)", None)
    keep_checkpoint: bool = doc(
        "keep checkpoint/ (optimizer and RNG state) once the run has finished; off: it is deleted, since a "
        "finished run is not resumed (it holds twice the trainable weights again, and all of them for full)",
        False,
    )
    report_to: list[str] = doc(
        "experiment trackers, through Accelerate: tensorboard, mlflow, wandb, trackio, aim, comet_ml, clearml, "
        "dvclive, swanlab (files go to the run's logs/ unless the tracker's own settings say otherwise)",
        factory=list,
    )


@dataclass
class OutputConfig:
    dir: str = doc("folder holding run directories", "runs")
    name: str = doc("run directory name (default: the config file's stem)", "")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every setting as `section.key`: value, as overrides name them."""
        return {
            f"{section}.{key}": value for section, values in self.to_dict().items() for key, value in values.items()
        }


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against the annotated type `kind`, converting only where YAML is ambiguous."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else _coerce(value, options[0], key)
    if origin is list:
        if not isinstance(value, list):
            raise LoralabError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise LoralabError(f"{key}: expected a mapping, got {value!r}")
        key_kind, value_kind = typing.get_args(kind)
        return {_coerce(k, key_kind, key): _coerce(v, value_kind, f"{key}.{k}") for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        # YAML 1.1 reads `5e-5` (no dot) as a string.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off as booleans: a text setting (train.compile) gets them back
            return "on" if value else "off"
        if isinstance(value, (str, int, float)):
            return str(value)
    raise LoralabError(f"{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in values:
        if name not in known:
            where = f"{prefix}.{name}" if prefix else name
            raise LoralabError(f"unknown config key '{where}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, raw in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(raw, dict):
                raise LoralabError(f"{key}: expected a mapping, got {raw!r}")
            kwargs[name] = _build(kind, raw, key)
        else:
            kwargs[name] = _coerce(raw, kind, key)
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    def require(ok: bool, message: str) -> None:
        if not ok:
            raise LoralabError(message)

    require(cfg.model.head in HEAD_MODES, f"model.head: '{cfg.model.head}' is not one of {', '.join(HEAD_MODES)}")
    require(cfg.model.finetune in FINETUNE, f"model.finetune: '{cfg.model.finetune}' is not one of lora, full")
    require(cfg.model.pooling in POOLINGS, f"model.pooling: '{cfg.model.pooling}' is not one of {', '.join(POOLINGS)}")
    require(bool(cfg.lora.scope), "lora.scope: name at least one module")
    require(cfg.lora.r >= 1, f"lora.r: must be >= 1, got {cfg.lora.r}")
    require(cfg.lora.alpha > 0, f"lora.alpha: must be > 0, got {cfg.lora.alpha}")
    require(0 <= cfg.lora.dropout < 1, f"lora.dropout: must be in [0, 1), got {cfg.lora.dropout}")
    require(cfg.lora.budget >= 1, f"lora.budget: must be >= 1, got {cfg.lora.budget}")
    method = cfg.lora.method
    require(method in METHODS, f"lora.method: '{method}' is not one of {', '.join(METHODS)}")
    for other in METHODS.values():  # another method's own settings stay at their defaults
        if other.name != method:
            for name, default in other.option_defaults().items():
                require(
                    getattr(cfg.lora, name) == default,
                    f"lora.{name} is {other.label}'s: with lora.method {method} leave it at {default!r} (or use "
                    f"lora.method {other.name})",
                )
    problem = METHODS[method].check(cfg)
    require(problem is None, problem or "")
    require(cfg.data.task in TASKS, f"data.task: '{cfg.data.task}' is not one of {', '.join(TASKS)}")
    problem = SHAPES[cfg.data.task].label_names_problem(cfg.data.label_names)
    require(problem is None, problem or "")
    calibrate = cfg.train.calibrate
    require(calibrate in CALIBRATIONS, f"train.calibrate: '{calibrate}' is not one of {', '.join(CALIBRATIONS)}")
    require(
        cfg.train.calibrate == "none" or SHAPES[cfg.data.task].probabilities,
        f"train.calibrate: a {cfg.data.task} run answers no probabilities to calibrate: leave it at none",
    )
    metrics = TASK_METRICS[cfg.data.task]
    require(
        not cfg.train.metric_for_best or cfg.train.metric_for_best in metrics,
        f"train.metric_for_best: '{cfg.train.metric_for_best}' is not a {cfg.data.task} metric ({', '.join(metrics)})",
    )
    require(cfg.data.label_separator != "", "data.label_separator: must not be empty")
    require(cfg.data.val_size >= 1, f"data.val_size: must be >= 1, got {cfg.data.val_size}")
    require(cfg.data.max_length >= 2, f"data.max_length: must be >= 2, got {cfg.data.max_length}")
    require(
        cfg.data.long_texts in LONG_TEXTS, f"data.long_texts: '{cfg.data.long_texts}' is not one of truncate, chunk"
    )
    if cfg.data.long_texts == "chunk":
        require(not cfg.data.text_pair_column, "data.long_texts: chunk reads single texts; pairs are truncated")
        require(
            0 <= cfg.data.window_stride() <= cfg.data.max_length // 2,
            f"data.stride: {cfg.data.stride} must be 0 to half of data.max_length ({cfg.data.max_length // 2}); "
            "leave it unset for a quarter of data.max_length",
        )
    t = cfg.train
    for name in ("steps", "batch_size", "eval_batch_size", "grad_accum", "eval_every", "log_every"):
        require(getattr(t, name) >= 1, f"train.{name}: must be >= 1, got {getattr(t, name)}")
    require(t.lr > 0, f"train.lr: must be > 0, got {t.lr}")
    require(t.warmup_steps >= 0, f"train.warmup_steps: must be >= 0, got {t.warmup_steps}")
    require(0 <= t.warmup_ratio < 1, f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    require(t.epochs >= 0, f"train.epochs: must be >= 0, got {t.epochs}")
    require(t.scheduler in SCHEDULERS, f"train.scheduler: '{t.scheduler}' is not one of {', '.join(SCHEDULERS)}")
    require(t.precision in PRECISIONS, f"train.precision: '{t.precision}' is not one of {', '.join(PRECISIONS)}")
    require(t.compile in COMPILE, f"train.compile: '{t.compile}' is not one of {', '.join(COMPILE)}")
    require(t.max_grad_norm >= 0 and t.weight_decay >= 0, "train.max_grad_norm and train.weight_decay must be >= 0")
    require(0 < t.layer_lr_decay <= 1, f"train.layer_lr_decay: must be in (0, 1], got {t.layer_lr_decay}")
    require(t.early_stopping_patience >= 0, "train.early_stopping_patience: must be >= 0")
    require(0 <= t.label_smoothing < 1, f"train.label_smoothing: must be in [0, 1), got {t.label_smoothing}")
    name = cfg.output.name
    require(
        "/" not in name and "\\" not in name and name not in (".", ".."),
        f"output.name: '{name}' is a path; name the run directory only (it goes inside output.dir '{cfg.output.dir}')",
    )
    for tracker in t.report_to:  # whether it is installed matters only to training (tracking.check_installed)
        require(tracker in TRACKERS, f"train.report_to: '{tracker}' is not one of {', '.join(TRACKERS)}")
    if cfg.data.label_names:  # otherwise checked once the data has named them
        check_class_weights(cfg)


def oriented(metric: str, value: float) -> float:
    """A metric's value turned so that higher is better (MSE negated): the one place that knows which way each
    metric improves (each task names its own in tasks/)."""
    return -value if metric in LOWER_IS_BETTER else value


def goodness(metric: str, value: float) -> float:
    """oriented(), with an undefined value ranked last."""
    return -math.inf if math.isnan(value) else oriented(metric, value)


def metric_for_best(cfg: Config) -> str:
    """The validation metric that picks a run's peak."""
    return cfg.train.metric_for_best or TASK_METRICS[cfg.data.task][0]


def check_class_weights(cfg: Config) -> None:
    n_labels, weights = len(cfg.data.label_names), cfg.train.class_weights
    if weights is not None and (len(weights) != n_labels or not all(w > 0 for w in weights)):
        raise LoralabError(f"train.class_weights: need {n_labels} positive weights, one per label")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LoralabError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a repeated key: plain YAML keeps the last one, so a second `model:` section
    silently drops every key of the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise LoralabError(
                    f"duplicate key '{key}' at lines {seen[key]} and {line}: keep one (merge a repeated section "
                    "into the first)"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def yaml_load(text: str) -> Any:
    """YAML as safe_load reads it, except that a repeated key is an error naming both lines."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value`, the value read as YAML (so lists and numbers work)."""
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise LoralabError(f"override '{text}': expected section.key=value")
    try:
        return key.strip(), yaml_load(raw)
    except LoralabError as err:
        raise LoralabError(f"override '{text}': {err}") from None
    except yaml.YAMLError as err:
        raise LoralabError(f"override '{text}': bad value ({err.__class__.__name__})") from err


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LoralabError(f"config file not found: {path}")
    try:
        tree = yaml_load(path.read_text()) or {}
    except LoralabError as err:
        raise LoralabError(f"bad config {path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise LoralabError(f"bad YAML in {path}{where}: {getattr(err, 'problem', err)}") from err
    if not isinstance(tree, dict):
        raise LoralabError(f"bad config {path}: the top level must be a mapping of sections")
    return tree


def from_dict(tree: dict, overrides: list[str] = (), values: dict[str, Any] | None = None) -> Config:
    """Build and validate; `overrides` are `section.key=value` strings, `values` the same already parsed."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    for dotted, value in (values or {}).items():
        _set_dotted(tree, dotted, value)
    cfg = _build(Config, tree, "")
    _validate(cfg)
    # Every local path as an absolute one, so a saved run finds its files from any folder.
    cfg.model.name = local_path_or_id(cfg.model.name)
    cfg.data.train = local_path_or_id(cfg.data.train)
    if cfg.data.validation and is_local(cfg.data.validation):
        cfg.data.validation = local_path_or_id(cfg.data.validation)
    return cfg


# Local data files by suffix, and the datasets builder that reads each.
DATA_FILE_TYPES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def is_local(name: str) -> bool:
    """The one rule for whether a model or data name means something on this machine (a folder or file,
    there or not) rather than a hub id (`name` or `org/name`): it exists here, or starts with ./, /, ~,
    has more than one slash, ends in a slash, has a backslash, or ends in a data file's suffix."""
    return (
        Path(os.path.expanduser(name)).exists()
        or name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or name.endswith("/")
        or "\\" in name
        or Path(name).suffix.lower() in DATA_FILE_TYPES
    )


def missing_here(name: str) -> bool:
    """A name meant as a local folder or file that is not on this machine."""
    return is_local(name) and not Path(os.path.expanduser(name)).exists()


def local_path_or_id(name: str) -> str:
    """A local file or folder as an absolute path, so a saved run finds it from any directory; a hub
    id as it is. Paths may start with ~ (as in a shell); hub ids never do."""
    expanded = os.path.expanduser(name)
    return str(Path(expanded).resolve()) if Path(expanded).exists() else expanded


def is_key(dotted: str) -> bool:
    """Whether `section.key` names a config field."""
    section, _, key = dotted.partition(".")
    kinds = typing.get_type_hints(Config)
    return section in kinds and key in {f.name for f in dataclasses.fields(kinds[section])}


def load(path: str | Path | None, overrides: list[str] = (), values: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file, then the overrides; the run name defaults to the file's stem."""
    tree = read_yaml(path) if path else {}
    if path and not tree:
        raise LoralabError(
            f"config file {path} is empty: give it sections such as model:, lora:, train: (see configs/seed.yaml)"
        )
    cfg = from_dict(tree, overrides, values)
    if not cfg.output.name:
        cfg.output.name = Path(path).stem if path else "run"
    return cfg
