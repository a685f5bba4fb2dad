"""Exports that prove themselves: merged, adapter-only, ONNX and int8, each with export.json and a check
against the in-memory adapter; refused (nothing written) when the check fails; ONNX read by `predict`
in a fresh process."""

import csv
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import synthetic_rows, train_tiny, write_csv

from loralab.cli import main
from loralab.errors import LoralabError
from loralab.serving.export import ExportOptions, export_run


@pytest.fixture(scope="module")
def runs(model_dirs, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    train_tiny(model_dirs["roberta"], tiny_data, root, "plain")
    train_tiny(model_dirs["roberta"], tiny_data, root, "mean", "model.pooling=mean")
    train_tiny(model_dirs["bert"], tiny_data, root, "bert")
    return root


@pytest.mark.parametrize(
    "kind, argv",
    [("merged", []), ("adapter", ["--adapter-only"]), ("onnx", ["--format", "onnx"])],
)
def test_every_export_writes_its_proof(runs, tmp_path, capsys, kind, argv):
    out = tmp_path / kind
    assert main(["export", str(runs / "plain"), str(out), *argv]) == 0
    printed = capsys.readouterr().out
    assert "checked on 64 rows: 64 answered the same" in printed
    record = json.loads((out / "export.json").read_text())
    check = record["check"]
    # Its speed, measured here beside the adapter's on the same rows, and the ratio printed.
    speed = check["speed"]
    assert speed["machine"].startswith("machine: cpu ") and speed["adapter_rows_per_s"] > 0
    assert speed["ratio"] == pytest.approx(speed["export_rows_per_s"] / speed["adapter_rows_per_s"])
    assert f"{speed['ratio']:.2f}x" in printed and speed["export_engine"] == (
        "onnx fp32" if kind == "onnx" else "pytorch fp32"
    )
    assert check["passed"] and check["same_answer"] == check["rows"] == 64
    assert check["max_probability_difference"] <= 1e-3 and check["adapter"] == check["export"]
    assert check["p_value"] == 1.0 and record["run"] == str((runs / "plain").resolve())
    # The checksums are of the files as written.
    for name, digest in record["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert set(record["files"]) | {"export.json"} == {p.name for p in out.iterdir()}
    if kind == "onnx":  # what Optimum's ORTModelForSequenceClassification reads beside the graph
        config = json.loads((out / "config.json").read_text())
        assert config["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}


def test_onnx_keeps_mean_pooling_and_bert_segments_and_predict_reads_it_in_a_fresh_process(runs, tmp_path):
    texts = write_csv(tmp_path / "in.csv", [(t,) for _, t in synthetic_rows(40, seed=6)], ("text",))
    for run in ("mean", "bert"):
        out = tmp_path / f"{run}-onnx"
        assert main(["export", str(runs / run), str(out), "--format", "onnx"]) == 0
        assert json.loads((out / "export.json").read_text())["check"]["passed"]
        answers = {}
        for source in (runs / run, out):  # the run itself (PyTorch) and its ONNX export, each in its own process
            target = tmp_path / f"{run}-{source.name}.csv"
            done = subprocess.run(
                [sys.executable, "-m", "loralab.cli", "predict", str(source), "--input", str(texts), "--out",
                 str(target), "--probs", "--precision", "fp32"], capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            with open(target) as handle:
                answers[source] = list(csv.DictReader(handle))
        ours, onnx = answers[runs / run], answers[out]
        assert [r["Label"] for r in ours] == [r["Label"] for r in onnx]
        probabilities = lambda rows: np.array([[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows])  # noqa: E731
        assert np.abs(probabilities(ours) - probabilities(onnx)).max() <= 1e-4


def test_a_damaged_onnx_file_is_one_line_naming_it_for_predict_and_serve(runs, tmp_path):
    out = tmp_path / "onnx"
    assert main(["export", str(runs / "plain"), str(out), "--format", "onnx", "--no-check"]) == 0
    graph = out / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # a copy that broke halfway
    texts = write_csv(tmp_path / "in.csv", [("c0w1 f3",)], ("text",))
    commands = {
        "predict": ["predict", str(out), "--input", str(texts), "--out", str(tmp_path / "p.csv")],
        "serve": ["serve", str(out), "--port", "0"],
    }
    for name, argv in commands.items():
        done = subprocess.run([sys.executable, "-m", "loralab.cli", *argv], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, (name, done.stderr[-2000:])
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"loralab: error: {graph} cannot be read by ONNX Runtime")
        assert "export the run again" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "p.csv").exists()


def test_int8_is_refused_only_where_the_rows_show_it_worse_than_chance(
    runs, model_dirs, tiny_data, tmp_path, monkeypatch
):
    import loralab.serving.export as export_module

    # A run that learned the task, so that a broken export can be told from chance on its 64 rows.
    learned = train_tiny(model_dirs["roberta"], tiny_data, tmp_path, "learned", "lora.scope=[query,value,ffn_in]",
                         "lora.r=8", "train.steps=200", "train.eval_every=100")  # fmt: skip
    assert learned.peak_val_accuracy >= 0.5
    run = tmp_path / "learned"
    out, check = export_run(str(run), str(tmp_path / "int8"), ExportOptions(format="onnx", quantize="int8"))
    assert check["tolerance"].startswith("accuracy not significantly worse") and check["passed"]
    low, high = check["difference_95ci"]
    assert check["difference"] == pytest.approx(check["export"] - check["adapter"]) and low <= high
    fp32, _ = export_run(str(run), str(tmp_path / "fp32"), ExportOptions(format="onnx"))
    assert (out / "model.onnx").stat().st_size < (fp32 / "model.onnx").stat().st_size  # the weights are int8
    # An int8 export that really is worse (one class favoured): refused on the same 64 rows, with its numbers.
    real = export_module.write_files

    def favour_one_class(tmp, options, cfg, tokenizer, model, folder, run):
        model.classifier.out_proj.bias.data[0] += 10.0  # beyond any learned margin: class 0 nearly everywhere
        real(tmp, options, cfg, tokenizer, model, folder, run)

    monkeypatch.setattr(export_module, "write_files", favour_one_class)
    with pytest.raises(LoralabError, match=r"on 64 rows .* difference 95% CI -0\.\d+ to -0\.\d+, p [0-9.e-]+; needed"):
        export_run(str(run), str(tmp_path / "worse"), ExportOptions(format="onnx", quantize="int8"))
    assert not (tmp_path / "worse").exists()


def test_a_failing_check_writes_nothing_and_no_check_says_so(runs, tmp_path, capsys, monkeypatch):
    import loralab.serving.export as export_module

    # An exporter that gets one weight wrong: the check must catch it.
    real = export_module.write_files

    def corrupt(tmp, options, cfg, tokenizer, model, folder, run):
        model.classifier.out_proj.bias.data[0] += 3.0  # one class favoured: other answers
        real(tmp, options, cfg, tokenizer, model, folder, run)

    monkeypatch.setattr(export_module, "write_files", corrupt)
    out = tmp_path / "wrong"
    assert main(["export", str(runs / "plain"), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not answer like the adapter" in err[0] and "nothing was written" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".wrong*"))
    assert main(["export", str(runs / "plain"), str(out), "--no-check"]) == 0
    assert json.loads((out / "export.json").read_text())["check"] == {"skipped": "--no-check"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--quantize", "int8"], "add --format onnx"),
        (["--adapter-only", "--format", "onnx"], "takes no --format onnx"),
        (["--check-data", "nope.csv"], "data file not found"),
    ],
)
def test_bad_export_options_are_one_line(runs, tmp_path, capsys, argv, message):
    assert main(["export", str(runs / "plain"), str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
