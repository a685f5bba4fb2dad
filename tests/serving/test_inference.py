import csv
import json
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import FAMILIES, synthetic_rows, train_tiny, write_csv

from loralab.cli import main
from loralab.modeling.forward import first_token_after_last_attention
from loralab.modeling.model import load_trained
from loralab.serving.inference import evaluation_report
from loralab.stats import wilson_interval


@pytest.fixture(scope="module")
def runs(model_dirs, tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for head in ("full", "out_proj", "lora"):
        train_tiny(model_dirs["roberta"], tiny_data, root, head, f"model.head={head}")
    train_tiny(model_dirs["roberta"], tiny_data, root, "mean", "model.pooling=mean")
    return root


@pytest.fixture
def texts_file(tmp_path):
    rows = synthetic_rows(50, seed=7)
    return write_csv(tmp_path / "texts.csv", [(text,) for _, text in rows], header=("text",))


def read_predictions(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("run", ["full", "out_proj", "lora", "mean"])
def test_merged_and_unmerged_logits_agree(runs, run, model_dirs):
    cfg, tokenizer, unmerged = load_trained(runs / run)
    _, _, merged = load_trained(runs / run, merged=True)
    batch = tokenizer([t for _, t in synthetic_rows(16, seed=3)], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = unmerged(**batch).logits, merged(**batch).logits
        with unmerged.disable_adapter():
            untrained = unmerged(**batch).logits
    assert (a - b).abs().max().item() <= 1e-4
    assert (a - untrained).abs().max().item() > 1e-3  # the adapter changed something: the comparison is not vacuous
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_predict_keeps_input_order(runs, texts_file, tmp_path):
    out = tmp_path / "pred.csv"
    assert (
        main(
            [
                "predict",
                str(runs / "full"),
                "--input",
                str(texts_file),
                "--out",
                str(out),
                "--batch-size",
                "8",
                "--probs",
                "--precision",
                "fp32",  # the numbers of the one-by-one fp32 forward below, on any CPU
            ]
        )
        == 0
    )
    rows = read_predictions(out)
    assert [int(r["ID"]) for r in rows] == list(range(50))
    cfg, tokenizer, model = load_trained(runs / "full", merged=True)
    texts = [r[0] for r in csv.reader(open(texts_file))][1:]
    with torch.no_grad():
        one_by_one = [model(**tokenizer(t, return_tensors="pt")).logits.softmax(-1)[0] for t in texts]
    assert [int(r["Label"]) for r in rows] == [int(p.argmax()) for p in one_by_one]
    for row, p in zip(rows, one_by_one):
        assert float(row["prob_World"]) == pytest.approx(p[0].item(), abs=1e-5)


def test_label_names_option(runs, texts_file, tmp_path):
    out = tmp_path / "named.csv"
    assert main(["predict", str(runs / "full"), "--input", str(texts_file), "--out", str(out), "--label-names"]) == 0
    named = [r["Label"] for r in read_predictions(out)]
    by_index = tmp_path / "indices.csv"
    assert main(["predict", str(runs / "full"), "--input", str(texts_file), "--out", str(by_index)]) == 0
    names = ["World", "Sports", "Business", "Sci/Tech"]
    assert len(named) == 50 and named == [names[int(r["Label"])] for r in read_predictions(by_index)]


def test_pickled_dataset_needs_allow_pickle(runs, tmp_path, capsys):
    from datasets import Dataset

    path = tmp_path / "test.pkl"
    with open(path, "wb") as handle:
        pickle.dump(Dataset.from_dict({"text": [t for _, t in synthetic_rows(10)]}), handle)
    out = tmp_path / "submission.csv"
    assert main(["predict", str(runs / "full"), "--input", str(path), "--out", str(out)]) == 2
    assert "--allow-pickle" in capsys.readouterr().err and not out.exists()
    assert main(["predict", str(runs / "full"), "--input", str(path), "--out", str(out), "--allow-pickle"]) == 0
    assert [r["ID"] for r in read_predictions(out)] == [str(i) for i in range(10)]


@pytest.mark.parametrize("case", ["no adapter", "no text column", "empty row"])
def test_bad_input_leaves_no_output(runs, tmp_path, capsys, case):
    run, source = runs / "full", tmp_path / "in.csv"
    if case == "no adapter":
        run = tmp_path / "half-run"
        run.mkdir()
        (run / "config.yaml").write_text((runs / "full" / "config.yaml").read_text())
        write_csv(source, [("a b",)], header=("text",))
    elif case == "no text column":
        write_csv(source, [("a b",)], header=("body",))
    else:
        write_csv(source, [("a b",), ("",)], header=("text",))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--input", str(source), "--out", str(out)]) == 2
    message = {
        "no adapter": "has no adapter in best/",
        "no text column": "no 'text' column",
        "empty row": "line 3 has an empty",
    }[case]
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".pred.csv*"))


def test_export_loads_without_peft(runs, texts_file, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(runs / "lora"), str(out)]) == 0
    predictions = tmp_path / "pred.csv"
    assert main(["predict", str(runs / "lora"), "--input", str(texts_file), "--out", str(predictions)]) == 0
    expected = [int(r["Label"]) for r in read_predictions(predictions)]
    script = f"""
import sys, csv, json
sys.modules["peft"] = None  # importing peft now fails
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({str(out)!r}).eval()
tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
texts = [r["text"] for r in csv.DictReader(open({str(texts_file)!r}))]
batch = tokenizer(texts, padding=True, return_tensors="pt")
print(json.dumps({{"labels": model(**batch).logits.argmax(-1).tolist(), "id2label": model.config.id2label}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["labels"] == expected
    assert loaded["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}


def test_export_adapter_only_has_a_model_card(runs, tmp_path):
    out = tmp_path / "adapter"
    assert main(["export", str(runs / "full"), str(out), "--adapter-only"]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer.json",
    }
    card = (out / "README.md").read_text()
    summary = json.loads((runs / "full" / "summary.json").read_text())
    assert f"{summary['trainable']['total']:,}" in card and "peak validation accuracy" in card
    assert main(["export", str(runs / "full"), str(out), "--adapter-only"]) == 2  # not over a non-empty folder


def test_export_of_a_mean_pooled_run_needs_adapter_only(runs, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(runs / "mean"), str(out)]) == 2  # a plain head would read the first token
    assert "--adapter-only" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(runs / "mean"), str(out), "--adapter-only"]) == 0
    assert "pooling: mean" in (out / "README.md").read_text()


@pytest.mark.parametrize("run", ["full", "mean"])
def test_eval_on_validation_rows_matches_training(runs, run, capsys):
    assert main(["eval", str(runs / run)]) == 0
    saved = runs / run / "eval" / "val-best"
    metrics = json.loads((saved / "metrics.json").read_text())
    summary = json.loads((runs / run / "summary.json").read_text())
    assert metrics["accuracy"] == summary["peak_val_accuracy"] and metrics["rows"] == 64
    assert (saved / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(map(sum, metrics["confusion_matrix"])) == 64
    assert "accuracy" in capsys.readouterr().out


def test_evaluation_report_by_hand():
    from loralab.tasks import Decision, SingleLabel

    labels, predictions = [0, 0, 1, 1, 2, 3], [0, 1, 1, 1, 2, 0]
    report = evaluation_report(SingleLabel(4), labels, predictions, ["a", "b", "c", "d"], Decision())
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert report["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["f1_macro"] == pytest.approx((0.5 + 0.8 + 1.0 + 0.0) / 4)
    import sklearn.metrics as metrics  # an independent implementation of Matthews' coefficient

    assert report["mcc"] == pytest.approx(metrics.matthews_corrcoef(labels, predictions))
    low, high = report["mcc_95ci"]
    assert low < report["mcc"] < high
    assert report["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    low, high = report["accuracy_95ci"]
    assert (round(low, 4), round(high, 4)) == (0.3000, 0.9032)


def test_wilson_interval_of_the_study_peak():
    low, high = wilson_interval(585, 640)  # 91.41% on 640 rows
    assert (round(low, 4), round(high, 4)) == (0.8898, 0.9334)  # about +-2.2 points, as the study never showed


@pytest.mark.parametrize("family", FAMILIES)
def test_first_token_trim_keeps_logits(family, model_dirs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dirs[family])
    model = AutoModelForSequenceClassification.from_pretrained(model_dirs[family]).eval()
    batch = tokenizer([t for _, t in synthetic_rows(8, seed=5)], padding=True, return_tensors="pt")
    block_output_tokens = []
    last_block = next(m for name, m in model.named_modules() if name.endswith("layer.1"))
    last_block.register_forward_hook(
        lambda module, args, output: block_output_tokens.append(
            (output[0] if isinstance(output, tuple) else output).shape[1]
        )
    )
    with torch.no_grad():
        whole = model(**batch).logits
        with first_token_after_last_attention(model) as trimmed:
            trimmed_logits = model(**batch).logits
    assert (whole - trimmed_logits).abs().max().item() <= 1e-5
    # DistilBERT adds the attention residual outside its attention module: it must run whole.
    assert trimmed == (family != "distilbert")
    assert block_output_tokens == [batch["input_ids"].shape[1], 1 if trimmed else batch["input_ids"].shape[1]]


def test_bf16_predict_casts_linears_once_with_the_same_probabilities(runs, texts_file, tmp_path, monkeypatch):
    import loralab.serving.engine as inference_module

    args = ["predict", str(runs / "out_proj"), "--input", str(texts_file), "--probs", "--precision", "bf16"]
    cast = inference_module.cast_frozen_linears
    seen = {}

    def cast_and_look(model, precision):
        cast(model, precision)
        seen["dtypes"] = {p.dtype for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}

    monkeypatch.setattr(inference_module, "cast_frozen_linears", cast_and_look)
    assert main([*args, "--out", str(tmp_path / "cast.csv")]) == 0
    assert seen["dtypes"] == {torch.bfloat16}  # every Linear of the merged model, head included
    monkeypatch.setattr(inference_module, "cast_frozen_linears", lambda model, precision: None)
    assert main([*args, "--out", str(tmp_path / "autocast.csv")]) == 0
    # Autocast would run the same Linear layers in bf16 from fp32 weights: the same numbers, bit for bit.
    assert (tmp_path / "cast.csv").read_text() == (tmp_path / "autocast.csv").read_text()
    fp32 = tmp_path / "fp32.csv"
    assert main([*args[:-1], "fp32", "--out", str(fp32)]) == 0
    assert fp32.read_text() != (tmp_path / "cast.csv").read_text()  # bf16 really ran: the comparison is not vacuous


def test_eval_on_the_training_file_says_how_many_rows_were_trained_on(runs, tiny_data, capsys):
    assert main(["eval", str(runs / "full"), "--data", str(tiny_data), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    # train_tiny holds 64 of the 400 rows out: the other 336 were trained on.
    assert report["training_rows"] == 336 and report["rows"] == 400
    assert "336 of the 400 rows" in captured.err and "not a held-out estimate" in captured.err
    held_out = write_csv(runs / "held-out.csv", synthetic_rows(40, seed=11))
    assert main(["eval", str(runs / "full"), "--data", str(held_out), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["training_rows"] == 0 and "warning" not in captured.err


@pytest.mark.parametrize("flags, same_as", [({"avx2"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16")])
def test_predict_auto_runs_what_the_cpu_computes_natively(
    runs, texts_file, tmp_path, monkeypatch, capsys, flags, same_as
):
    from loralab import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    args = ["predict", str(runs / "out_proj"), "--input", str(texts_file), "--probs"]
    assert main([*args, "--precision", "auto", "--out", str(tmp_path / "auto.csv")]) == 0
    assert f"(pytorch, precision {same_as} (auto: " in capsys.readouterr().out  # said with the result
    assert main([*args, "--precision", same_as, "--out", str(tmp_path / "explicit.csv")]) == 0
    assert (tmp_path / "auto.csv").read_text() == (tmp_path / "explicit.csv").read_text()


@pytest.mark.parametrize("flags, used", [({"avx2"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16")])
def test_predict_by_default_runs_the_precision_the_run_trained_in_where_it_is_native(
    runs, model_dirs, tiny_data, texts_file, tmp_path, monkeypatch, capsys, flags, used
):
    from loralab import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    args = ["--input", str(texts_file), "--out", str(tmp_path / "out.csv")]
    assert main(["predict", str(runs / "out_proj"), *args]) == 0  # trained in fp32: fp32 on any CPU
    assert "precision fp32 (trained: the run trained in fp32)" in capsys.readouterr().out
    train_tiny(model_dirs["roberta"], tiny_data, tmp_path, "bf16", "train.precision=bf16")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "bf16"), *args]) == 0
    said = capsys.readouterr().out
    if used == "bf16":
        assert "precision bf16 (trained: the run trained in bf16; the CPU has avx512_bf16)" in said
    else:  # emulated here: auto decides, and says why
        assert "precision fp32 (trained: the run trained in bf16, emulated here: auto chose fp32 (the CPU" in said


@pytest.mark.parametrize("run", ["full", "mean"])
def test_batches_padded_to_buckets_answer_as_unpadded_ones_in_fp32(runs, run, monkeypatch):
    """Answering batches are padded to a multiple of PAD_MULTIPLE tokens (few shapes: bounded kernel caches); the
    pads are masked, so first-token and mean pooling answer as without them."""
    import loralab.modeling.forward as forward
    from loralab.serving.engine import classify, open_engine

    texts = [text for _, text in synthetic_rows(40, seed=5)]
    engine = open_engine(runs / run, precision="fp32")
    padded = classify(engine, texts, None)
    monkeypatch.setattr(forward, "PAD_MULTIPLE", None)  # each batch to its longest row only
    unpadded = classify(engine, texts, None)
    assert forward.PAD_MULTIPLE is None and padded.shape == unpadded.shape == (40, 4)
    assert padded.argmax(-1).tolist() == unpadded.argmax(-1).tolist()
    assert (padded - unpadded).abs().max().item() <= 1e-5
    lengths = engine.encode(texts, None).lengths
    assert max(lengths) % 32 != 0  # the buckets really added pads to these rows
