"""From a trained run to answers: evaluation reports, prediction files, and exported models."""

from __future__ import annotations

import csv
import io
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from .budget import looks_like_path
from .data import LabelledTexts, load_labelled, load_texts, rows_sha256, split_validation
from .errors import LoralabError, warn
from .evaluate import evaluation_report, predict_logits
from .model import cast_frozen_linears, load_trained
from .plots import plot_confusion
from .store import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    FROZEN_WEIGHTS,
    RunDir,
    replace_dir,
    write_json_atomic,
    write_text_atomic,
)


def autocast_for(precision: str):
    if precision == "fp32":
        return nullcontext
    return lambda: torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def classify(model, tokenizer, texts: list[str], cfg, batch_size: int, precision: str) -> torch.Tensor:
    """Class probabilities of each text, in input order, truncated and pooled as the run was trained."""
    ids = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
    # Nothing trains here: under autocast every Linear weight would be cast again for every batch.
    model.requires_grad_(False)
    cast_frozen_linears(model, precision)
    model.to(device())
    logits = predict_logits(
        model, tokenizer, ids, batch_size, device(), autocast_for(precision), cfg.model.pooling, progress=True
    )
    return logits.softmax(-1)


def evaluate_run(
    run_path: str,
    data: str | None,
    split: str,
    which: str,
    batch_size: int,
    precision: str,
    base_model: str | None = None,
) -> dict:
    """Metrics of a run's adapter on its own validation rows, or on another labelled set."""
    run = RunDir(Path(run_path))
    cfg, tokenizer, model = load_trained(run.path, which, merged=True, base_model=base_model)
    report = {"run": str(run_path), "adapter": which, "data": data or f"{cfg.data.train} (validation rows)"}
    if data is None:
        rows = validation_rows(run, cfg)
        tag = "val"
    else:
        rows = load_labelled(data, cfg.data, split)
        tag = f"{Path(data).stem if Path(data).exists() else data.replace('/', '_')}-{split}"
        seen = training_rows_in(cfg, rows)
        if seen:
            warn(
                f"{seen} of the {len(rows.texts)} rows of {data} were training rows of this run: its accuracy on "
                "them is not a held-out estimate (without --data, eval scores the run's validation rows)"
            )
        report["training_rows"] = seen
    probs = classify(model, tokenizer, rows.texts, cfg, batch_size, precision)
    predictions = probs.argmax(-1).tolist()
    report |= evaluation_report(rows.labels, predictions, cfg.data.label_names)

    folder = run.eval_dir(f"{tag}-{which}")
    write_json_atomic(folder / "metrics.json", report)
    write_json_atomic(folder / "predictions.json", {"labels": rows.labels, "predictions": predictions})
    title = f"{run.path.name} ({which}) on {tag}: accuracy {report['accuracy']:.4f}"
    plot_confusion(report["confusion_matrix"], cfg.data.label_names, folder / "confusion", title)
    report["saved_in"] = str(folder)
    return report


def validation_rows(run: RunDir, cfg) -> LabelledTexts:
    """The rows the run was validated on, drawn again from its training data and checked to be the same
    rows (data.json): a training file that changed since would give other rows under the same name."""
    if looks_like_path(cfg.data.train) and not Path(cfg.data.train).exists():
        raise LoralabError(
            f"run {run.path} drew its validation rows from {cfg.data.train}, which is not on this machine: "
            "pass --data FILE to evaluate on a labelled file the run did not train on"
        )
    everything = load_labelled(cfg.data.train, cfg.data)
    rows = split_validation(everything, cfg.data.val_size, cfg.data.split_seed)[1]
    saved = run.read_data_identity()
    if saved is None:
        warn(
            f"run {run.path} records no identity of its data (trained before loralab 0.3): the validation rows "
            f"drawn again from {cfg.data.train} cannot be checked to be the ones it was scored on"
        )
    elif rows_sha256(rows) != saved.val_sha256:
        raise LoralabError(
            f"the validation rows of run {run.path} are no longer in {cfg.data.train}: the data changed since it "
            f"trained ({saved.rows} rows then, {len(everything.texts)} now); restore it, or pass --data FILE with "
            "labelled rows the run did not train on"
        )
    return rows


def training_rows_in(cfg, rows: LabelledTexts) -> int | None:
    """How many of `rows` the run trained on (by text), where its training data is on this machine."""
    if not looks_like_path(cfg.data.train) or not Path(cfg.data.train).exists():
        return None
    trained = split_validation(load_labelled(cfg.data.train, cfg.data), cfg.data.val_size, cfg.data.split_seed)[0]
    seen = set(trained.texts)
    return sum(text in seen for text in rows.texts)


def predict_file(
    run_path: str,
    input_path: str,
    out_path: str,
    text_column: str = "text",
    which: str = "best",
    allow_pickle: bool = False,
    label_names: bool = False,
    probs: bool = False,
    batch_size: int = 16,
    precision: str = "fp32",
    base_model: str | None = None,
) -> int:
    """Write `ID,Label` (and probabilities if asked) for every input row, in input order."""
    if Path(out_path).is_dir():
        raise LoralabError(
            f"--out {out_path} is a directory: name the CSV file to write, e.g. {Path(out_path) / 'predictions.csv'}"
        )
    texts, ids = load_texts(input_path, text_column, allow_pickle)
    cfg, tokenizer, model = load_trained(run_path, which, merged=True, base_model=base_model)
    probabilities = classify(model, tokenizer, texts, cfg, batch_size, precision)
    names = cfg.data.label_names
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["ID", "Label"] + ([f"prob_{name}" for name in names] if probs else []))
    for row, p in zip(ids or range(len(texts)), probabilities.tolist()):
        label = max(range(len(p)), key=p.__getitem__)
        writer.writerow([row, names[label] if label_names else label] + ([f"{x:.6f}" for x in p] if probs else []))
    write_text_atomic(Path(out_path), buffer.getvalue())
    return len(texts)


def export_run(
    run_path: str, out_dir: str, which: str = "best", adapter_only: bool = False, base_model: str | None = None
) -> Path:
    """A plain Hugging Face model folder (LoRA merged), or the adapter files with a model card."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LoralabError(f"{out} is a file: name a new folder to export into")
    if out.exists() and any(out.iterdir()):
        raise LoralabError(f"{out} exists and is not empty: name a new folder to export into")
    run = RunDir(Path(run_path))
    folder = run.adapter(which)
    cfg = run.read_config()
    if adapter_only and cfg.model.finetune == "full":
        raise LoralabError(
            f"run {run_path} fine-tuned every weight: it has no adapter; export it without --adapter-only"
        )
    if not adapter_only and cfg.model.pooling != "first":
        raise LoralabError(
            f"run {run_path} pools the {cfg.model.pooling} of the last layer, which a plain transformers head "
            "cannot do: export it with --adapter-only"
        )
    # Loading also refuses a run that cannot be reproduced, for both kinds of export.
    cfg, tokenizer, model = load_trained(run.path, which, merged=not adapter_only, base_model=base_model)

    def fill(tmp: Path) -> None:
        if adapter_only:
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, FROZEN_WEIGHTS):
                if (folder / name).exists():
                    shutil.copy(folder / name, tmp / name)
            (tmp / "README.md").write_text(model_card(cfg, run, frozen=(folder / FROZEN_WEIGHTS).exists()))
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    replace_dir(out, fill)
    return out


def loading_snippet(cfg, frozen: bool) -> str:
    """How to load an exported adapter with transformers and PEFT (the model card shows it; a test runs it)."""
    lines = [
        "from peft import PeftModel",
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
            "from loralab.model import pool_mean_into_first_token",
            "pool_mean_into_first_token(base)",
        ]
    lines += [
        "model = PeftModel.from_pretrained(base, folder).eval()",
        "tokenizer = AutoTokenizer.from_pretrained(folder)",
    ]
    return "\n".join(lines)


def model_card(cfg, run: RunDir, frozen: bool) -> str:
    summary = run.read_summary() if run.summary.exists() else None
    trainable = (summary.trainable if summary else None) or {}
    lines = [
        "---",
        f"base_model: {cfg.model.name}",
        "library_name: peft",
        "pipeline_tag: text-classification",
        "---",
        "",
        f"# {cfg.output.name}",
        "",
        f"LoRA adapter for `{cfg.model.name}`, trained with loralab. Load it with:",
        "",
        "```python",
        loading_snippet(cfg, frozen),
        "```",
        "",
        f"- labels: {', '.join(cfg.data.label_names)}",
        f"- LoRA: scope {', '.join(cfg.lora.scope)}, r={cfg.lora.r}, alpha={cfg.lora.alpha:g}, "
        f"dropout={cfg.lora.dropout:g}; head {cfg.model.head}",
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
    if summary:
        lines += [
            f"- peak validation accuracy: {summary.peak_val_accuracy:.4f} at step {summary.peak_step} "
            f"({summary.val_rows} rows)",
            f"- training: {summary.steps_done} steps, lr {cfg.train.lr:g}, batch {cfg.train.batch_size}",
        ]
    return "\n".join(lines) + "\n"
