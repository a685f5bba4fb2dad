"""From a trained run to answers: evaluation reports, prediction files, and exported models."""

from __future__ import annotations

import csv
import io
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from .data import load_labelled, load_texts, split_validation
from .errors import LoralabError
from .evaluate import confusion_matrix, macro_f1, per_class, predict_logits, wilson_interval
from .model import load_tokenizer, load_trained, trained_run
from .store import RunDir, replace_dir, write_json_atomic, write_text_atomic


def autocast_for(precision: str):
    if precision == "fp32":
        return nullcontext
    return lambda: torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def classify(model, tokenizer, texts: list[str], cfg, batch_size: int, precision: str) -> torch.Tensor:
    """Class probabilities of each text, in input order, truncated and pooled as the run was trained."""
    ids = tokenizer(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
    model.to(device())
    logits = predict_logits(model, tokenizer, ids, batch_size, device(), autocast_for(precision), cfg.model.pooling)
    return logits.softmax(-1)


def evaluation_report(labels: list[int], predictions: list[int], label_names: list[str]) -> dict:
    n = len(label_names)
    correct = sum(p == y for p, y in zip(predictions, labels))
    low, high = wilson_interval(correct, len(labels))
    return {
        "rows": len(labels),
        "accuracy": correct / len(labels),
        "accuracy_95ci": [low, high],
        "macro_f1": macro_f1(labels, predictions, n),
        "per_class": {name: row for name, row in zip(label_names, per_class(labels, predictions, n))},
        "confusion_matrix": confusion_matrix(labels, predictions, n),
    }


def plot_confusion(matrix: list[list[int]], label_names: list[str], stem: Path, title: str) -> None:
    from .plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(label_names) + 2, 1.2 * len(label_names) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=30, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    save_figure(fig, stem, formats=("png",))


def evaluate_run(run_path: str, data: str | None, split: str, which: str, batch_size: int, precision: str) -> dict:
    """Metrics of a run's adapter on its own validation rows, or on another labelled set."""
    cfg, tokenizer, model = load_trained(run_path, which, merged=True)
    if data is None:
        rows = split_validation(load_labelled(cfg.data.train, cfg.data), cfg.data.val_size, cfg.data.split_seed)[1]
        tag = "val"
    else:
        rows = load_labelled(data, cfg.data, split)
        tag = f"{Path(data).stem if Path(data).exists() else data.replace('/', '_')}-{split}"
    probs = classify(model, tokenizer, rows.texts, cfg, batch_size, precision)
    predictions = probs.argmax(-1).tolist()
    report = {"run": str(run_path), "adapter": which, "data": data or f"{cfg.data.train} (validation rows)"}
    report |= evaluation_report(rows.labels, predictions, cfg.data.label_names)

    folder = RunDir(Path(run_path)).path / "eval" / f"{tag}-{which}"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "metrics.json", report)
    write_json_atomic(folder / "predictions.json", {"labels": rows.labels, "predictions": predictions})
    title = f"{Path(run_path).name} ({which}) on {tag}: accuracy {report['accuracy']:.4f}"
    plot_confusion(report["confusion_matrix"], cfg.data.label_names, folder / "confusion", title)
    report["saved_in"] = str(folder)
    return report


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
) -> int:
    """Write `ID,Label` (and probabilities if asked) for every input row, in input order."""
    texts = load_texts(input_path, text_column, allow_pickle)
    cfg, tokenizer, model = load_trained(run_path, which, merged=True)
    probabilities = classify(model, tokenizer, texts, cfg, batch_size, precision)
    names = cfg.data.label_names
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["ID", "Label"] + ([f"prob_{name}" for name in names] if probs else []))
    for row, p in enumerate(probabilities.tolist()):
        label = max(range(len(p)), key=p.__getitem__)
        writer.writerow([row, names[label] if label_names else label] + ([f"{x:.6f}" for x in p] if probs else []))
    write_text_atomic(Path(out_path), buffer.getvalue())
    return len(texts)


def export_run(run_path: str, out_dir: str, which: str = "best", adapter_only: bool = False) -> Path:
    """A plain Hugging Face model folder (LoRA merged), or the adapter files with a model card."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise LoralabError(f"{out} exists and is not empty")
    run = RunDir(Path(run_path))
    cfg, adapter = trained_run(run_path, which)
    if adapter_only:
        tokenizer = load_tokenizer(cfg.model.name)
    elif cfg.model.pooling != "first":
        raise LoralabError(
            f"run {run_path} pools the {cfg.model.pooling} of the last layer, which a plain transformers head "
            "cannot do: export it with --adapter-only"
        )
    else:
        cfg, tokenizer, model = load_trained(run_path, which, merged=True)

    def fill(tmp: Path) -> None:
        if adapter_only:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(adapter / name, tmp / name)
            (tmp / "README.md").write_text(model_card(cfg, run))
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    replace_dir(out, fill)
    return out


def model_card(cfg, run: RunDir) -> str:
    summary = json.loads(run.summary.read_text()) if run.summary.exists() else {}
    trainable = summary.get("trainable", {})
    lines = [
        "---",
        f"base_model: {cfg.model.name}",
        "library_name: peft",
        "pipeline_tag: text-classification",
        "---",
        "",
        f"# {cfg.output.name}",
        "",
        f"LoRA adapter for `{cfg.model.name}`, trained with loralab. Load it with",
        f"`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained('{cfg.model.name}', num_labels={len(cfg.data.label_names)}), '.')`.",
        "",
        f"- labels: {', '.join(cfg.data.label_names)}",
        f"- LoRA: scope {', '.join(cfg.lora.scope)}, r={cfg.lora.r}, alpha={cfg.lora.alpha:g}, dropout={cfg.lora.dropout:g}; head {cfg.model.head}",
        f"- pooling: {cfg.model.pooling}"
        + (" (the head reads the mean of the last layer over real tokens, written into position 0)" if cfg.model.pooling == "mean" else " token"),
        f"- trainable parameters: {trainable.get('total', 'unknown'):,} of a budget of {cfg.lora.budget:,}"
        if trainable
        else f"- budget: {cfg.lora.budget:,}",
    ]
    for label, count in trainable.get("rows", {}).items():
        lines.append(f"  - {label}: {count:,}")
    if summary:
        lines += [
            f"- peak validation accuracy: {summary['peak_val_accuracy']:.4f} at step {summary['peak_step']} "
            f"({summary['val_rows']} rows)",
            f"- training: {summary['steps_done']} steps, lr {cfg.train.lr:g}, batch {cfg.train.batch_size}",
        ]
    return "\n".join(lines) + "\n"
