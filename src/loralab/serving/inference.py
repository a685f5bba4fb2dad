"""From a trained run (or an ONNX export) to answers: evaluation reports and prediction files (exports: export.py,
the HTTP server: serve.py)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..config import is_local, metric_for_best, missing_here
from ..data import LabelledTexts, load_labelled, load_texts, rows_sha256, training_and_validation
from ..errors import LoralabError, warn
from ..modeling.forward import evaluation_report
from ..options import InferenceOptions, PredictOptions
from ..reporting.plots import plot_confusion, plot_reliability
from ..runs.files import write_json_atomic, write_text_atomic
from ..runs.rundir import RunDir
from ..tasks import task_for
from .engine import classify, config_of, open_engine


def opened(path: str, options: InferenceOptions):
    return open_engine(path, options.which, options.precision, options.base_model, options.threads)


def evaluate_run(run_path: str, data: str | None, split: str, options: InferenceOptions) -> dict:
    """Metrics of a run's adapter on its own validation rows, or on another labelled set."""
    run = RunDir(Path(run_path))
    cfg = run.read_config()
    run.adapter(options.which)  # a run without that adapter is said before its rows are read
    report = {"run": str(run_path), "adapter": options.which, "data": data or f"{cfg.data.train} (validation rows)"}
    if data is None:
        rows = validation_rows(run, cfg)
        tag = "val"
    else:
        rows = load_labelled(data, cfg.data, split)
        tag = f"{Path(data).stem if Path(data).exists() else data.replace('/', '_')}-{split}"
        seen = training_rows_in(cfg, rows)
        if seen:
            warn(
                f"{seen} of the {len(rows.texts)} rows of {data} were training rows of this run: its metrics on "
                "them are not a held-out estimate (without --data, eval scores the run's validation rows)"
            )
        report["training_rows"] = seen
    engine = opened(run_path, options)  # once the rows are read: a bad --data is one line, before any model
    task, decision = task_for(cfg), engine.decision
    logits = classify(engine, rows.texts, rows.pairs, options.batch_size)
    scored = task.score(logits, decision)
    predictions = scored.predictions
    report |= evaluation_report(task, rows.labels, predictions, cfg.data.label_names, decision, scored.scores)
    report["metric"] = metric_for_best(cfg)
    report["engine"] = engine.describe()

    folder = run.eval_dir(f"{tag}-{options.which}")
    write_json_atomic(folder / "metrics.json", report)
    answers = {
        "labels": rows.labels,
        "predictions": predictions,
        "scores": scored.scores if task.probabilities else None,
    }
    write_json_atomic(folder / "predictions.json", answers)
    if "confusion_matrix" in report:
        metric = report["metric"]
        title = f"{run.path.name} ({options.which}) on {tag}: {metric} {report[metric]:.4f}"
        plot_confusion(report["confusion_matrix"], cfg.data.label_names, folder / "confusion", title)
    if "reliability" in report:
        title = f"{run.path.name} ({options.which}) on {tag}: ECE {report['ece']:.4f}"
        plot_reliability({run.path.name: report["reliability"]}, folder / "reliability", title)
    report["saved_in"] = str(folder)
    return report


def validation_rows(run: RunDir, cfg) -> LabelledTexts:
    """The rows the run was validated on, drawn again from its training data and checked to be the same
    rows (data.json): a training file that changed since would give other rows under the same name."""
    if missing_here(cfg.data.train):
        raise LoralabError(
            f"run {run.path} drew its validation rows from {cfg.data.train}, which is not on this machine: "
            "pass --data FILE to evaluate on a labelled file the run did not train on"
        )
    everything, _, rows = training_and_validation(cfg.data)
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
    if not is_local(cfg.data.train) or missing_here(cfg.data.train):
        return None
    trained = training_and_validation(cfg.data)[1]
    seen = set(zip(trained.texts, trained.pairs or [""] * len(trained.texts)))
    return sum(row in seen for row in zip(rows.texts, rows.pairs or [""] * len(rows.texts)))


def predict_file(run_path: str, predict: PredictOptions, options: InferenceOptions) -> dict:
    """Write what the task answers for every input row, in input order: `ID,Label` (single-label; with
    probabilities if asked), `ID,Labels` (multi-label, joined by data.label_separator) or `ID,Score`."""
    out_path = predict.out
    if Path(out_path).is_dir():
        raise LoralabError(
            f"--out {out_path} is a directory: name the CSV file to write, e.g. {Path(out_path) / 'predictions.csv'}"
        )
    # The columns default to those the run (or the export's run) was trained on.
    saved = config_of(run_path)
    texts, pairs, ids = load_texts(
        predict.input,
        predict.text_column or saved.data.text_column,
        predict.allow_pickle,
        saved.data.text_pair_column if predict.text_pair_column is None else predict.text_pair_column,
    )
    engine = opened(run_path, options)
    cfg, decision = engine.cfg, engine.decision
    logits = classify(engine, texts, pairs, options.batch_size)
    task = task_for(cfg)
    scored = task.score(logits, decision)
    names = cfg.data.label_names
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    with_probs = predict.probs and task.probabilities
    writer.writerow(["ID", task.column] + ([f"prob_{name}" for name in names] if with_probs else []))
    for row, prediction, score in zip(ids or range(len(texts)), scored.predictions, scored.scores):
        value = task.cell(prediction, names if predict.label_names else None, cfg.data.label_separator)
        writer.writerow([row, value] + ([f"{x:.6f}" for x in score] if with_probs else []))
    write_text_atomic(Path(out_path), buffer.getvalue())
    # What ran, said with the result (not before it: a failure stays one line).
    return {"rows": len(texts), "engine": engine.kind, "precision": engine.precision.line()}
