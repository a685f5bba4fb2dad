"""Task shapes end to end on tiny models: sentence pairs, multi-label, regression, epochs; and the task
metrics against independent implementations (scikit-learn, SciPy)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SEED_CONFIG, multi_label_rows, pair_rows, regression_rows, write_csv

from loralab import config
from loralab.cli import main
from loralab.runs.rundir import RunDir
from loralab.tasks import Decision, MultiLabel, Regression, SingleLabel, metrics
from loralab.training.train import train


def tiny(model_dir, data, out_dir, name, *extra):
    return [
        f"model.name={model_dir}", f"data.train={data}", "data.val_size=64", "data.max_length=32",
        "data.label_names=[]", "lora.scope=[query,value]", "lora.r=4", "train.steps=40", "train.batch_size=16",
        "train.eval_every=10", "train.warmup_steps=0", "train.lr=2e-2", f"output.dir={out_dir}",
        f"output.name={name}", *extra,
    ]  # fmt: skip


def read_csv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_metrics_agree_with_scikit_learn_and_scipy():
    import sklearn.metrics as sk
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    single = metrics(SingleLabel(3), y.tolist(), p.tolist())
    assert single["mcc"] == pytest.approx(sk.matthews_corrcoef(y, p))
    assert single["f1_macro"] == pytest.approx(sk.f1_score(y, p, average="macro"))
    hot_y, hot_p = rng.integers(0, 2, (200, 4)), rng.integers(0, 2, (200, 4))
    multi = metrics(MultiLabel(4), hot_y.tolist(), hot_p.tolist())
    assert multi["f1_micro"] == pytest.approx(sk.f1_score(hot_y, hot_p, average="micro"))
    assert multi["f1_macro"] == pytest.approx(sk.f1_score(hot_y, hot_p, average="macro"))
    assert multi["subset_accuracy"] == pytest.approx(sk.accuracy_score(hot_y, hot_p))
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    b[:20] = np.round(b[:20])  # ties, which Spearman ranks by their mean
    regression = metrics(Regression(1), a.tolist(), b.tolist())
    assert regression["pearson"] == pytest.approx(pearsonr(a, b)[0])
    assert regression["spearman"] == pytest.approx(spearmanr(a, b)[0])
    assert regression["mse"] == pytest.approx(sk.mean_squared_error(a, b))


def test_thresholds_are_tuned_per_label_and_scaling_comes_back_in_units():
    probabilities = torch.tensor([0.12, 0.22, 0.37, 0.47, 0.52, 0.63, 0.82, 0.91])
    logits = torch.logit(probabilities).unsqueeze(1).repeat(1, 2)
    # Label 0 is on from 0.82 up: every threshold of the grid in (0.63, 0.82] separates, and of 0.65 ... 0.8
    # the one nearest 0.5 is kept; label 1 is on from 0.37 up: 0.25/0.3/0.35 separate, 0.35 is kept.
    truth = [[float(p >= 0.8), float(p >= 0.35)] for p in probabilities.tolist()]
    decision = MultiLabel(2).fit_decision(logits, truth, Decision(), tune=True)
    assert decision.thresholds == pytest.approx([0.65, 0.35])
    assert metrics(MultiLabel(2), truth, MultiLabel(2).score(logits, decision).predictions)["subset_accuracy"] == 1
    scaled = Regression(1).score(torch.tensor([[0.0], [1.0]]), Decision(target_mean=15.0, target_std=10.0))
    assert scaled.predictions == [15.0, 25.0]


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_pairs_train_eval_and_predict(model_dirs, tmp_path, family):
    data = write_csv(tmp_path / "pairs.csv", pair_rows(400), ("label", "premise", "hypothesis"))
    overrides = tiny(
        model_dirs[family], data, tmp_path / "runs", "pairs", "data.text_column=premise",
        "data.text_pair_column=hypothesis",
    )  # fmt: skip
    summary = train(config.load(SEED_CONFIG, overrides))
    # The label is in the second text alone: learning it means the pair reached the model.
    assert summary.peak > 0.85, summary.peak
    without_pairs = train(
        config.load(SEED_CONFIG, [*overrides, "data.text_column=premise", "data.text_pair_column=''", "output.name=a"])
    )
    assert without_pairs.peak < 0.7
    run = tmp_path / "runs" / "pairs"
    unlabelled = write_csv(
        tmp_path / "in.csv", [(a, b) for _, a, b in pair_rows(30, seed=5)], ("premise", "hypothesis")
    )
    out = tmp_path / "out.csv"
    assert main(["predict", str(run), "--input", str(unlabelled), "--out", str(out)]) == 0
    got = [int(row["Label"]) for row in read_csv(out)]
    assert np.mean(np.array(got) == np.array([y for y, _, _ in pair_rows(30, seed=5)])) > 0.8


def test_multi_label_end_to_end(model_dirs, tmp_path, capsys):
    data = write_csv(tmp_path / "tags.csv", multi_label_rows(400))
    overrides = tiny(
        model_dirs["roberta"], data, tmp_path / "runs", "tags", "data.task=multi_label", "train.steps=120",
        "train.lr=1e-2", "train.tune_thresholds=true",
    )  # fmt: skip
    summary = train(config.load(SEED_CONFIG, overrides))
    run = RunDir(tmp_path / "runs" / "tags")
    saved = run.read_config()
    assert saved.data.label_names == ["c0", "c1", "c2", "c3"] and summary.metric == "f1_micro"
    # Micro-F1 well above 0.61, what switching every label on would score here.
    assert summary.peak > 0.75 and summary.peak_95ci[0] <= summary.peak <= summary.peak_95ci[1]
    thresholds = run.read_decision().thresholds
    assert len(thresholds) == 4 and all(0 < t < 1 for t in thresholds)
    capsys.readouterr()
    assert main(["eval", str(run.path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == "multi_label" and report["f1_micro"] == pytest.approx(summary.peak)
    assert set(report["per_label"]) == {"c0", "c1", "c2", "c3"}
    texts = write_csv(tmp_path / "in.csv", [(t,) for _, t in multi_label_rows(20, seed=3)], ("text",))
    out = tmp_path / "out.csv"
    assert main(["predict", str(run.path), "--input", str(texts), "--out", str(out), "--label-names", "--probs"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["ID", "Labels", "prob_c0", "prob_c1", "prob_c2", "prob_c3"]
    truth = [set(labels.split(",")) for labels, _ in multi_label_rows(20, seed=3)]
    predicted = [set(filter(None, row["Labels"].split(","))) for row in rows]
    hits = sum(len(p & t) for p, t in zip(predicted, truth))
    assert 2 * hits / (sum(map(len, predicted)) + sum(map(len, truth))) > 0.7  # micro-F1 of the written file
    # The merged export is a plain transformers multi-label classifier.
    assert main(["export", str(run.path), str(tmp_path / "merged")]) == 0
    exported = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert exported["problem_type"] == "multi_label_classification" and len(exported["id2label"]) == 4
    assert json.loads((tmp_path / "merged" / "decision.json").read_text())["thresholds"] == thresholds


def test_regression_end_to_end_in_a_fresh_process(model_dirs, tmp_path):
    data = write_csv(tmp_path / "scores.csv", regression_rows(400))
    overrides = tiny(
        model_dirs["roberta"], data, tmp_path / "runs", "scores", "data.task=regression", "data.scale_targets=true",
        "train.metric_for_best=spearman", "train.lr=1e-2",
    )  # fmt: skip
    summary = train(config.load(SEED_CONFIG, overrides))
    assert summary.metric == "spearman" and summary.peak > 0.8
    decision = RunDir(tmp_path / "runs" / "scores").read_decision()
    assert decision.target_mean == pytest.approx(15.0, abs=1.5) and decision.target_std == pytest.approx(11.2, abs=1)
    texts = write_csv(tmp_path / "in.csv", [(t,) for _, t in regression_rows(40, seed=8)], ("text",))
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [sys.executable, "-m", "loralab.cli", "predict", str(tmp_path / "runs" / "scores"), "--input", str(texts),
         "--out", str(out)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = read_csv(out)
    assert list(rows[0]) == ["ID", "Score"]
    scores = np.array([float(r["Score"]) for r in rows])
    truth = np.array([y for y, _ in regression_rows(40, seed=8)])
    # In the targets' own units (0 to 30), not the standardised ones the model trained on.
    assert np.corrcoef(scores, truth)[0, 1] > 0.8 and abs(scores.mean() - truth.mean()) < 5


def test_epochs_warmup_ratio_and_a_validation_file(model_dirs, tiny_data, tmp_path, capsys):
    from conftest import synthetic_rows

    held_out = write_csv(tmp_path / "dev.csv", synthetic_rows(50, seed=4))
    overrides = tiny(
        model_dirs["roberta"], tiny_data, tmp_path / "runs", "epochs", "data.label_names=[World, Sports, Business, "
        "Sci/Tech]", "train.epochs=1.5", "train.warmup_ratio=0.1", f"data.validation={held_out}",
    )  # fmt: skip
    summary = train(config.load(SEED_CONFIG, overrides))
    # 400 training rows (none held out: validation comes from dev.csv) x 1.5 epochs / 16 per step.
    assert summary.steps_done == 38 and summary.val_rows == 50
    out = capsys.readouterr().out  # which of two settings decided, and what it came to, in the first lines
    assert "train.epochs 1.5 decides the length: 38 steps over 400 rows (train.steps 40 not used)" in out
    assert "train.warmup_ratio 0.1 decides the warmup: 4 steps (train.warmup_steps 0 not used)" in out
    saved = RunDir(tmp_path / "runs" / "epochs").read_config()
    assert (saved.train.steps, saved.train.warmup_steps) == (38, 4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.task=regression", "data.label_names=[a, b]"], "a regression has one output"),
        (["train.metric_for_best=pearson"], "'pearson' is not a single_label metric"),
        (["data.task=ranking"], "data.task: 'ranking' is not one of"),
        (["data.task=regression", "data.train={words}"], "in 'label': a regression target must be a finite number"),
        (["data.text_pair_column=nope"], "no 'nope' column"),
        (["train.warmup_ratio=1"], "train.warmup_ratio"),
    ],
)
def test_bad_task_settings_are_one_line(model_dirs, tiny_data, tmp_path, capsys, extra, message):
    words = write_csv(tmp_path / "words.csv", multi_label_rows(10))
    extra = [e.format(words=words) for e in extra]
    argv = ["train", "--config", str(SEED_CONFIG), *tiny(model_dirs["roberta"], tiny_data, tmp_path, "x"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_other_tasks_in_runs_against_plots_and_jsonl_lists(model_dirs, tmp_path, capsys):
    from loralab.reporting.plots import plot_runs
    from loralab.runs.results import against_references, find_runs

    rows = [{"text": t, "label": labels.split(",")} for labels, t in multi_label_rows(300)]
    data = tmp_path / "tags.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))  # labels as JSON lists
    runs = tmp_path / "runs"
    for name, lr in (("a", "2e-2"), ("b", "5e-3")):
        train(config.load(SEED_CONFIG, tiny(model_dirs["roberta"], data, runs, name, "data.task=multi_label",
                                            f"train.lr={lr}", "train.steps=20")))  # fmt: skip
    a, b = find_runs([str(runs / "a")]) + find_runs([str(runs / "b")])
    assert a.config.data.label_names == ["c0", "c1", "c2", "c3"] and a.metric == "f1_micro"
    (row,) = against_references([a], [b])
    assert row["note"] == "paired bootstrap" and row["only_a"] is None
    from loralab.stats import paired_bootstrap_p
    from loralab.tasks.base import f1_micro_labels

    pa, pb = a.run.read_predictions("best"), b.run.read_predictions("best")  # each run's own peak rows
    assert row["p_value"] == paired_bootstrap_p(f1_micro_labels, pa.labels, pa.predictions, pb.predictions)
    assert paired_bootstrap_p(f1_micro_labels, pa.labels, pa.predictions, pa.predictions) == 1.0
    assert main(["runs", str(runs), "--against", str(runs / "b")]) == 0
    assert "paired bootstrap" in capsys.readouterr().out
    plotted = plot_runs([a, b], tmp_path / "figures")
    assert plotted and (tmp_path / "figures" / "loss_runs.png").exists()
    (curves,) = [v for stem, v in plotted.items() if stem != "fig_reliability"]
    assert sorted(curves.values()) == sorted([a.peak, b.peak])  # the curves drawn are of the run's metric
    # And the group's best run's calibration, from the probabilities saved with its predictions.
    (best,) = plotted["fig_reliability"]
    assert best.startswith(f"runs: {max([a, b], key=lambda r: r.peak).name} (ECE ")


def strict_loads(text: str):
    """A parser as strict as browsers, jq, Go and Java: NaN and Infinity are errors."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_undefined_metrics_are_null_with_their_reason_in_every_json_and_said_once(model_dirs, tmp_path, capfd):
    """Constant targets make a correlation undefined: files and `eval --json` stay strict JSON (null, and the
    reason beside it), the terminal says "undefined (...)" with no numpy warning, and the run reads back."""
    constant = write_csv(tmp_path / "flat.csv", [(10.0, t) for _, t in regression_rows(120)])
    overrides = tiny(model_dirs["roberta"], constant, tmp_path / "runs", "flat", "data.task=regression",
                     "data.label_names=[]", "train.steps=4")  # fmt: skip
    assert main(["train", "--config", str(SEED_CONFIG), *overrides]) == 0
    run = tmp_path / "runs" / "flat"
    summary = strict_loads((run / "summary.json").read_text())
    assert summary["peak"] is None and summary["peak_undefined"].startswith("the targets or the predictions are const")
    rows = [strict_loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [row for row in rows if row["split"] == "val"]
    assert val and all(row["pearson"] is None and "constant" in row["pearson_undefined"] for row in val)
    capfd.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    out, err = capfd.readouterr()
    report = strict_loads(out)
    assert report["pearson"] is None and report["pearson_95ci"] == [None, None] and report["mse"] >= 0
    assert "Warning" not in err
    assert main(["eval", str(run)]) == 0
    out, err = capfd.readouterr()
    assert out.count("undefined (the targets or the predictions are constant on these rows)") == 2  # pearson, spearman
    assert "Warning" not in err
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0  # the run reads back and lists
    assert strict_loads(capfd.readouterr().out)[0]["name"] == "flat"
