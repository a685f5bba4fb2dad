"""Exports of a trained run, each proving that it answers like the run's adapter: a merged Hugging Face
folder, the adapter alone (with a model card), or an ONNX graph, fp32 or int8, for ONNX Runtime.

export.json beside the files says where they came from (run, adapter, base model), their checksums, and
the check: the run's validation rows (or --check-data) scored by the in-memory adapter and by the export
read back from disk, the rows with the same answer, the largest probability difference, both metrics and
the exact McNemar p between them. An export that fails its tolerance is refused and nothing is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import hardware
from ..config import Config, metric_for_best, oriented
from ..data import LabelledTexts, load_labelled
from ..encoding import encode
from ..errors import LoralabError
from ..methods import ADAPTER_FILES, method_of
from ..modeling.model import load_adapter_folder, load_trained, uses_token_types
from ..options import ExportOptions
from ..runs.files import make_dir, replace_dir, write_json_atomic
from ..runs.frozen import FROZEN_WEIGHTS, has_frozen
from ..runs.rundir import DECISION, RunDir, read_decision_file, write_config_file
from ..stats import paired_difference_interval
from ..tasks import Decision, metrics, task_for
from .engine import EXPORT_RECORD, ONNX_FILE, RUN_CONFIG, OnnxEngine, TorchEngine, classify, open_engine
from .inference import validation_rows

FORMATS = ("hf", "onnx")
# fp32 exports answer as the adapter does, to float rounding; int8 weights cost a little accuracy, so an
# int8 export is refused only where the check rows show it worse than chance explains (at any row count).
PROBABILITY_TOLERANCE = 1e-3
SIGNIFICANCE = 0.05


def _kind(options: ExportOptions) -> str:
    if options.adapter_only:
        return "adapter"
    return "onnx-int8" if options.quantize else options.format


def _check_options(run_path: str, cfg: Config, options: ExportOptions) -> None:
    if options.format not in FORMATS:
        raise LoralabError(f"--format: '{options.format}' is not one of {', '.join(FORMATS)}")
    if options.quantize not in (None, "int8"):
        raise LoralabError(f"--quantize: '{options.quantize}' is not int8")
    if options.quantize and options.format != "onnx":
        raise LoralabError("--quantize int8 quantizes an ONNX graph: add --format onnx")
    if options.adapter_only and options.format != "hf":
        raise LoralabError("--adapter-only writes PEFT's adapter files: it takes no --format onnx")
    if options.adapter_only and cfg.model.finetune == "full":
        raise LoralabError(
            f"run {run_path} fine-tuned every weight: it has no adapter; export it without --adapter-only"
        )
    if options.format == "hf" and not options.adapter_only and cfg.model.pooling != "first":
        raise LoralabError(
            f"run {run_path} pools the {cfg.model.pooling} of the last layer, which a plain transformers head "
            "cannot do: export it with --adapter-only, or --format onnx (the pooling goes into the graph)"
        )
    if options.format == "onnx":
        for module in ("onnxruntime", "onnxscript"):
            if importlib.util.find_spec(module) is None:
                raise LoralabError(f"--format onnx needs {module}: pip install -e '.[onnx]'")


def export_run(run_path: str, out_dir: str, options: ExportOptions) -> tuple[Path, dict]:
    """Write the export into a new folder, check it against the in-memory adapter, and swap it in whole;
    returns the folder and the check."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LoralabError(f"{out} is a file: name a new folder to export into")
    if out.exists() and any(out.iterdir()):
        raise LoralabError(f"{out} exists and is not empty: name a new folder to export into")
    run = RunDir(Path(run_path))
    folder = run.adapter(options.which)
    _check_options(run_path, run.read_config(), options)
    # Loading also refuses a run that cannot be reproduced, for every kind of export.
    merged = not options.adapter_only
    cfg, tokenizer, model = load_trained(run.path, options.which, merged=merged, base_model=options.base_model)
    rows = None
    if options.check:
        rows = load_labelled(options.check_data, cfg.data) if options.check_data else validation_rows(run, cfg)
    decision = run.read_decision(options.which)
    record = {
        "loralab": _version(),
        "run": str(run.path.resolve()),
        "adapter": options.which,
        "format": _kind(options),
        "base_model": cfg.model.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def fill(tmp: Path) -> None:
        write_files(tmp, options, cfg, tokenizer, model, folder, run)
        record["check"] = (
            check_export(tmp, options, run, cfg, rows, decision) if rows is not None else {"skipped": "--no-check"}
        )
        record["files"] = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json_atomic(tmp / EXPORT_RECORD, record)

    make_dir(out.parent)
    if out.exists():
        out.rmdir()
    replace_dir(out, fill)
    return out, record["check"]


def _version() -> str:
    from .. import __version__

    return __version__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_files(tmp: Path, options: ExportOptions, cfg: Config, tokenizer, model, folder: Path, run: RunDir) -> None:
    decision = run.read_decision(options.which) if (folder / DECISION).exists() else None
    if not options.adapter_only and decision is not None and decision.temperature != 1.0:
        # A calibrated run's temperature goes into the head's output layer (logits/T = (W/T)x + b/T), so that
        # transformers, Optimum and plain ONNX Runtime read calibrated probabilities from the files alone;
        # decision.json then says 1.0, or loralab would divide twice.
        fold_temperature(model, decision.temperature)
        decision = dataclasses.replace(decision, temperature=1.0)
    if options.adapter_only:
        for name in (*ADAPTER_FILES, FROZEN_WEIGHTS):
            if (folder / name).exists():
                shutil.copy(folder / name, tmp / name)
        (tmp / "README.md").write_text(model_card(cfg, run, has_frozen(folder), decision))
    elif options.format == "hf":
        model.save_pretrained(tmp)
    else:
        write_onnx(model, tokenizer, cfg, tmp / ONNX_FILE, options.quantize)
        # Labels and model type beside the graph: Optimum's ORTModelForSequenceClassification loads the folder.
        model.config.save_pretrained(tmp)
    if decision is not None:  # thresholds, target scaling, temperature: what turns its logits into answers
        write_json_atomic(tmp / DECISION, dataclasses.asdict(decision))
    write_config_file(tmp / RUN_CONFIG, cfg)
    tokenizer.save_pretrained(tmp)


def fold_temperature(model, temperature: float) -> None:
    """Divide the merged model's logits by `temperature` in its weights: its head's output layer, scaled."""
    from ..budget.scope import family_of

    out = model.get_submodule(family_of(model.config.model_type).head_out)
    with torch.no_grad():
        out.weight.div_(temperature)
        if out.bias is not None:
            out.bias.div_(temperature)


def write_onnx(model, tokenizer, cfg: Config, path: Path, quantize: str | None) -> None:
    """The merged model (mean pooling included: its hooks are traced into the graph) as ONNX with dynamic
    batch and length, through torch.onnx's exporter; int8 through ONNX Runtime's dynamic quantization."""
    model = model.float().eval().requires_grad_(False)
    types = uses_token_types(tokenizer, model.config)
    pairs = ["a second text"] * 2 if cfg.data.text_pair_column else None
    sample = encode(tokenizer, ["an example", "another example text"], pairs, cfg.data.max_length, types)
    batch = tokenizer.pad(sample.features([0, 1]), return_tensors="pt")
    names = list(batch.keys())
    batch_dim, length_dim = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (),
            kwargs=dict(batch),
            input_names=names,
            output_names=["logits"],
            dynamic_shapes={name: {0: batch_dim, 1: length_dim} for name in names},
            dynamo=True,
        )
        target = path.with_name("fp32.onnx") if quantize else path
        program.save(str(target))
        if quantize:
            from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

            prepared = path.with_name("prepared.onnx")
            # ONNX shape inference and graph folding, as ONNX Runtime advises (its symbolic pass cannot read
            # the exporter's dynamic shapes).
            quant_pre_process(str(target), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8)
            for extra in [*path.parent.glob("fp32.onnx*"), *path.parent.glob("prepared.onnx*")]:
                extra.unlink()


@contextlib.contextmanager
def _quiet_loggers():
    """torch.onnx and ONNX Runtime's quantizer log progress and advice at WARNING (on the root logger too):
    an export says its one line of result instead."""
    import logging

    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "torch._dynamo", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_export(
    tmp: Path, options: ExportOptions, run: RunDir, cfg: Config, rows: LabelledTexts, decision: Decision
) -> dict:
    """The export read back from disk against the adapter in memory, on the same rows; refused outside
    the tolerance (fp32: every answer the same, probabilities within 1e-3; int8: not significantly worse).
    Both are timed on those rows: export.json records rows/s of each on this machine, so a user sees at
    once whether the export pays here (int8 does not on every CPU)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # The reference: the adapter unmerged (so a merge that went wrong shows), in fp32, the export's precision.
    reference = open_engine(run.path, options.which, "fp32", options.base_model, merged=False)
    kind = _kind(options)
    tokenizer = AutoTokenizer.from_pretrained(tmp)
    # The export is read as a user meets it: its own decision.json (a folded temperature reads 1.0 there).
    written = read_decision_file(tmp / DECISION) if (tmp / DECISION).exists() else decision
    if kind == "adapter":
        exported = TorchEngine(cfg, written, tokenizer, load_adapter_folder(cfg, tmp), "fp32")
    elif kind == "hf":
        merged = AutoModelForSequenceClassification.from_pretrained(tmp)
        exported = TorchEngine(cfg, written, tokenizer, merged, "fp32")
    else:
        exported = OnnxEngine(tmp, kind=kind)
    reference_logits, reference_rate = timed(reference, rows)
    exported_logits, exported_rate = timed(exported, rows)
    task, metric = task_for(cfg), metric_for_best(cfg)
    ours, theirs = task.score(reference_logits, decision), task.score(exported_logits, written)
    same = sum(a == b for a, b in zip(ours.predictions, theirs.predictions))
    difference = float(np.max(np.abs(np.asarray(ours.scores, float) - np.asarray(theirs.scores, float))))
    adapter_metric = metrics(task, rows.labels, ours.predictions)[metric]
    export_metric = metrics(task, rows.labels, theirs.predictions)[metric]
    check = {
        "rows": len(rows.texts),
        "data": options.check_data or f"{cfg.data.train} (validation rows)",
        "same_answer": same,
        "max_probability_difference": difference,
        "metric": metric,
        "adapter": adapter_metric,
        "export": export_metric,
        "speed": {
            "machine": hardware.machine_line(),
            "adapter_rows_per_s": reference_rate,
            "adapter_engine": "pytorch fp32, the adapter unmerged",
            "export_rows_per_s": exported_rate,
            "export_engine": f"{exported.kind} {exported.precision.used}",
            "ratio": exported_rate / reference_rate,
        },
    }
    # The paired difference on these rows, with its 95% interval, and the task's paired test (exact McNemar for
    # one class per row, a paired bootstrap otherwise): what the rows say about the export, at any size.
    metric_fn = task.metric_functions()[metric]
    low, high = paired_difference_interval(metric_fn, rows.labels, ours.predictions, theirs.predictions)
    test = task.paired_test(metric, rows.labels, ours.predictions, theirs.predictions)
    p = test["p_value"]
    check |= {"test": test["test"], "p_value": p}
    check["difference"] = export_metric - adapter_metric
    check["difference_95ci"] = [low, high]
    if kind == "onnx-int8":
        worse = oriented(metric, export_metric) < oriented(metric, adapter_metric)
        passed = not (worse and p < SIGNIFICANCE)
        rule = f"{metric} not significantly worse than the adapter's on these rows (p >= {SIGNIFICANCE:g})"
    else:
        passed = same == len(rows.texts) and difference <= PROBABILITY_TOLERANCE
        rule = f"every answer the same and probabilities within {PROBABILITY_TOLERANCE:g}"
    check |= {"tolerance": rule, "passed": passed}
    if not passed:
        raise LoralabError(
            f"the {kind} export does not answer like the adapter on {len(rows.texts)} rows ({same} the same, "
            f"probabilities up to {difference:.2g} apart, {metric} {export_metric:.4f} against {adapter_metric:.4f}, "
            f"difference 95% CI {low:+.4f} to {high:+.4f}, p {p:.3g}; needed: {rule}): nothing was written; "
            "--no-check writes it anyway"
        )
    return check


def timed(engine, rows: LabelledTexts) -> tuple:
    """An engine's logits of the rows, and its rows/s (tokenizing included, as predict runs)."""
    start = time.perf_counter()
    logits = classify(engine, rows.texts, rows.pairs)
    return logits, len(rows.texts) / max(time.perf_counter() - start, 1e-9)


def loading_snippet(cfg, frozen: bool) -> str:
    """How to load an exported adapter with transformers and PEFT (the model card shows it; a test runs it)."""
    lines = [
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'folder = "."  # this folder',
        f"base = AutoModelForSequenceClassification.from_pretrained({cfg.model.name!r}, "
        f"num_labels={len(cfg.data.label_names)}, ignore_mismatched_sizes=True)",
    ]
    if frozen:
        lines += [
            "# The adapter was trained on top of head weights the base checkpoint lacks (drawn at random, frozen):",
            "from safetensors.torch import load_file",
            f'base.load_state_dict(load_file(f"{{folder}}/{FROZEN_WEIGHTS}"), strict=False)',
        ]
    if cfg.model.pooling == "mean":
        lines += [
            "# The head reads the mean of the last layer over the real tokens (loralab's model.pooling: mean):",
            "from loralab.modeling.model import pool_mean_into_first_token",
            "pool_mean_into_first_token(base)",
        ]
    lines += [
        *method_of(cfg).loading_lines(),
        "tokenizer = AutoTokenizer.from_pretrained(folder)",
    ]
    return "\n".join(lines)


def model_card(cfg, run: RunDir, frozen: bool, decision: Decision | None) -> str:
    summary = run.read_summary() if run.summary.exists() else None
    trainable = (summary.trainable if summary else None) or {}
    method = method_of(cfg)
    lines = [
        "---",
        f"base_model: {cfg.model.name}",
        f"library_name: {method.library}",
        "pipeline_tag: text-classification",
        "---",
        "",
        f"# {cfg.output.name}",
        "",
        f"{method.title} for `{cfg.model.name}`, trained with loralab. Load it with:",
        "",
        "```python",
        loading_snippet(cfg, frozen),
        "```",
        "",
        f"- labels: {', '.join(cfg.data.label_names)}",
        f"- {method.name}: scope {', '.join(cfg.lora.scope)}, {method.settings(cfg)}; head {cfg.model.head}",
        f"- pooling: {cfg.model.pooling}"
        + (
            " (the head reads the mean of the last layer over real tokens, written into position 0)"
            if cfg.model.pooling == "mean"
            else " token"
        ),
        f"- trainable parameters: {trainable['total']:,} of a budget of {cfg.lora.budget:,}"
        if trainable
        else f"- budget: {cfg.lora.budget:,}",
    ]
    for label, count in trainable.get("rows", {}).items():
        lines.append(f"  - {label}: {count:,}")
    if decision is not None and decision.temperature != 1.0:
        lines.append(
            f"- calibrated: divide the logits by {decision.temperature:.4g} before the softmax (decision.json: "
            "temperature); merged and ONNX exports have it in their weights"
        )
    if summary:
        lines += [
            f"- peak validation {summary.metric}: {summary.peak_value:.4f} at step {summary.peak_step} "
            f"({summary.val_rows} rows)",
            f"- training: {summary.steps_done} steps, lr {cfg.train.lr:g}, batch {cfg.train.batch_size}",
        ]
    return "\n".join(lines) + "\n"
