"""Calibration: the expected calibration error with its interval, temperature scaling fitted on the validation
rows and saved with the adapter, applied by predict and eval in a fresh process, and never changing a label."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SEED_CONFIG, synthetic_rows, write_csv

from loralab import config
from loralab.cli import main
from loralab.errors import LoralabError
from loralab.stats import calibration_bins, expected_calibration_error
from loralab.tasks import MultiLabel, SingleLabel
from loralab.training.train import train


def test_ece_is_the_row_weighted_gap_between_stated_and_observed():
    # 100 answers stated at 0.9 of which 60 were right, 100 at 0.3 of which 30 were: gaps 0.3 and 0.
    confidence = [0.9] * 100 + [0.3] * 100
    happened = [1.0] * 60 + [0.0] * 40 + [1.0] * 30 + [0.0] * 70
    assert expected_calibration_error(confidence, happened) == pytest.approx(0.15)
    bins = calibration_bins(confidence, happened)
    assert [(b["rows"], round(b["confidence"], 6), round(b["frequency"], 6)) for b in bins] == [
        (100, 0.3, 0.3), (100, 0.9, 0.6)
    ]  # fmt: skip
    assert expected_calibration_error([1.0, 0.0, 1.0], [1.0, 0.0, 1.0]) == 0.0  # the edges fall in the end bins


def test_temperature_scaling_finds_the_temperature_that_sharpened_the_logits():
    """Labels drawn from softmax(z), logits shown as 2.5 z: the fit must find about 2.5, and no argmax moves."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(6000, 4, generator=generator) * 1.5
    labels = torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(1).tolist()
    task = SingleLabel(4)
    temperature = task.fit_temperature(2.5 * z, labels)
    assert temperature == pytest.approx(2.5, rel=0.1)
    decision = task.fit_decision(2.5 * z, labels, task.training_decision(labels, False), False, "temperature")
    calibrated, raw = task.score(2.5 * z, decision), task.score(2.5 * z, task.training_decision(labels, False))
    assert calibrated.predictions == raw.predictions
    ece = {name: expected_calibration_error(*task.calibration_events(labels, s.scores))
           for name, s in (("raw", raw), ("calibrated", calibrated))}  # fmt: skip
    assert ece["calibrated"] < ece["raw"] / 3


def test_multi_label_thresholds_are_carried_through_the_temperature():
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(800, 3, generator=generator)
    labels = (torch.rand(800, 3, generator=generator) < z.sigmoid()).float().tolist()
    task = MultiLabel(3)
    tuned = task.fit_decision(3 * z, labels, task.training_decision(labels, False), True, "none")
    both = task.fit_decision(3 * z, labels, task.training_decision(labels, False), True, "temperature")
    assert both.temperature == pytest.approx(3.0, rel=0.25) and both.thresholds != tuned.thresholds
    assert task.score(3 * z, both).predictions == task.score(3 * z, tuned).predictions


@pytest.fixture(scope="module")
def pair_of_runs(model_dirs, tmp_path_factory):
    """The same run twice (same seed, same rows), once with train.calibrate: temperature."""
    root = tmp_path_factory.mktemp("calibrated")
    data = write_csv(root / "train.csv", synthetic_rows(400))
    common = [
        f"model.name={model_dirs['roberta']}", f"data.train={data}", "data.val_size=128", "data.max_length=32",
        "lora.scope=[query,value]", "lora.r=4", "train.steps=40", "train.batch_size=16", "train.eval_every=20",
        "train.warmup_steps=0", "train.lr=2e-2", f"output.dir={root}",
    ]  # fmt: skip
    train(config.load(SEED_CONFIG, [*common, "output.name=plain"]))
    train(config.load(SEED_CONFIG, [*common, "output.name=calibrated", "train.calibrate=temperature"]))
    return root


def predicted(run, tmp_path) -> list[dict]:
    rows = write_csv(tmp_path / "in.csv", [(t,) for _, t in synthetic_rows(60, seed=9)], ("text",))
    out = tmp_path / f"{run.name}.csv"
    done = subprocess.run(
        [sys.executable, "-m", "loralab.cli", "predict", str(run), "--input", str(rows), "--out", str(out), "--probs",
         "--precision", "fp32"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open(out) as handle:
        return list(csv.DictReader(handle))


def test_a_calibrated_run_saves_its_temperature_and_predict_applies_it_without_changing_a_label(pair_of_runs, tmp_path):
    saved = json.loads((pair_of_runs / "calibrated" / "best" / "decision.json").read_text())
    assert saved["temperature"] != 1.0 and saved["temperature_rows"] == 128
    summary = json.loads((pair_of_runs / "calibrated" / "summary.json").read_text())
    assert summary["temperature"] == {"value": saved["temperature"], "rows": 128}  # how many rows fitted it
    plain, calibrated = predicted(pair_of_runs / "plain", tmp_path), predicted(pair_of_runs / "calibrated", tmp_path)
    assert [r["Label"] for r in plain] == [r["Label"] for r in calibrated]
    probabilities = lambda rows: np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])  # noqa: E731
    assert np.abs(probabilities(plain) - probabilities(calibrated)).max() > 1e-3
    # The temperature is what makes them differ: plain's logits divided by it give calibrated's probabilities.
    logits = torch.log(torch.tensor(probabilities(plain)).clamp_min(1e-12))
    expected = (logits / saved["temperature"]).softmax(-1).numpy()
    assert np.abs(expected - probabilities(calibrated)).max() < 1e-4
    # Each evaluation logged its ECE.
    rows = [json.loads(line) for line in (pair_of_runs / "calibrated" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["ece"] <= 1 for r in rows if r.get("split") == "val")


FRESH_READER = """
import json, sys
import numpy as np, onnxruntime, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
hf, onnx, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(hf)
batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
with torch.no_grad():
    merged = AutoModelForSequenceClassification.from_pretrained(hf).eval()(**batch).logits.softmax(-1).tolist()
session = onnxruntime.InferenceSession(onnx + "/model.onnx")
feed = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
logits = torch.tensor(session.run(None, feed)[0])
print(json.dumps({"hf": merged, "onnx": logits.softmax(-1).tolist()}))
"""


def test_exports_carry_the_temperature_in_their_weights_for_plain_transformers_and_onnx_runtime(pair_of_runs, tmp_path):
    """A merged or ONNX export of a calibrated run, read in a fresh process by transformers and ONNX Runtime alone
    (no loralab, no decision.json), answers the calibrated probabilities that loralab predict gives."""
    run = pair_of_runs / "calibrated"
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert main(["export", str(run), str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    assert json.loads((tmp_path / "hf" / "decision.json").read_text())["temperature"] == 1.0
    texts = [t for _, t in synthetic_rows(60, seed=9)]
    done = subprocess.run(
        [sys.executable, "-c", FRESH_READER, str(tmp_path / "hf"), str(tmp_path / "onnx"), json.dumps(texts)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    read = json.loads(done.stdout)
    calibrated = np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in predicted(run, tmp_path)])
    assert np.abs(np.array(read["hf"]) - calibrated).max() < 1e-4
    assert np.abs(np.array(read["onnx"]) - calibrated).max() < 1e-3


def test_eval_reports_the_ece_with_its_interval_and_draws_the_reliability_diagram(pair_of_runs, capsys):
    assert main(["eval", str(pair_of_runs / "calibrated"), "--precision", "fp32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    low, high = report["ece_95ci"]
    assert low <= report["ece"] <= high and sum(b["rows"] for b in report["reliability"]) == report["rows"]
    assert (pair_of_runs / "calibrated" / "eval" / "val-best" / "reliability.png").stat().st_size > 0


def test_plot_draws_each_groups_best_run_calibration(pair_of_runs, tmp_path):
    assert main(["plot", str(pair_of_runs), "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "fig_reliability.svg").read_text().count("<svg") == 1


def test_calibrating_a_regression_is_refused_in_one_line(tmp_path):
    with pytest.raises(LoralabError, match="a regression run answers no probabilities to calibrate"):
        config.load(SEED_CONFIG, ["data.task=regression", "data.label_names=[]", "train.calibrate=temperature"])
    with pytest.raises(LoralabError, match="train.calibrate: 'platt' is not one of none, temperature"):
        config.load(SEED_CONFIG, ["train.calibrate=platt"])


def test_a_temperature_from_a_handful_of_rows_is_refused_before_anything_is_written(model_dirs, tmp_path, capsys):
    data = write_csv(tmp_path / "train.csv", synthetic_rows(200))
    argv = ["train", "--config", str(SEED_CONFIG), f"model.name={model_dirs['roberta']}", f"data.train={data}",
            "data.val_size=1", "train.calibrate=temperature", f"output.dir={tmp_path / 'runs'}"]  # fmt: skip
    assert main(argv) == 2
    assert "fitted on 1 validation rows, and a temperature from fewer than 100 is noise" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
