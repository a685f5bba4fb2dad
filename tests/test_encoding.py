"""Rows as the model reads them: long texts chunked into overlapping windows, trained on with their text's label
and answered once per text, in input order, by eval, predict and serve."""

import csv
import random
import subprocess
import sys

import pytest
import torch
from conftest import CLASS_WORDS, FILLER, SEED_CONFIG, call, make_tokenizer, start, stop, write_csv

from loralab import config
from loralab.cli import main
from loralab.encoding import Encoded, encode
from loralab.errors import LoralabError
from loralab.training.train import train


def test_a_long_text_becomes_overlapping_windows_each_with_its_texts_label():
    tokenizer = make_tokenizer()
    long, short = " ".join(FILLER[:30]), "f1 f2"
    data = encode(tokenizer, [long, short], None, 12, False, labels=[3, 1], stride=4)
    # 30 words in windows of 10 (12 less [CLS] and [SEP]) sharing 4: words 0-9, 6-15, ..., 24-29; then the short one.
    assert data.owner == [0, 0, 0, 0, 0, 1] and data.labels == [3, 3, 3, 3, 3, 1] and data.row_labels == [3, 1]
    words = [tokenizer.convert_ids_to_tokens(ids)[1:-1] for ids in data.input_ids[:5]]
    assert words[0] == FILLER[:10] and words[1][:4] == FILLER[6:10] and words[-1][-1] == FILLER[29]
    assert all(len(ids) <= 12 for ids in data.input_ids)
    assert encode(tokenizer, [long], None, 12, False).owner is None  # truncated: one row per text


def test_windows_logits_become_one_row_per_text_by_mean_or_max():
    data = Encoded([[1]] * 5, [], None, owner=[0, 0, 1, 1, 1])
    logits = torch.tensor([[1.0, 0.0], [3.0, -2.0], [0.0, 0.0], [3.0, 3.0], [-3.0, 0.0]])
    assert data.per_row(logits, "mean").tolist() == [[2.0, -1.0], [0.0, 1.0]]
    assert data.per_row(logits, "max").tolist() == [[3.0, 0.0], [3.0, 3.0]]


def late_words_rows(n: int, seed: int) -> list[tuple[int, str]]:
    """The class keywords only after 16 filler words: past the first window of 14 words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 4
        rows.append((label, " ".join(rng.choices(FILLER, k=16) + rng.sample(CLASS_WORDS[label], 3))))
    return rows


@pytest.fixture(scope="module")
def late_runs(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("long-texts")
    data = write_csv(root / "late.csv", late_words_rows(400, seed=0))
    common = [
        f"model.name={model_dirs['roberta']}", f"data.train={data}", "data.val_size=96", "data.max_length=16",
        "lora.scope=[query,value,ffn_in]", "lora.r=8", "train.steps=300", "train.batch_size=16", "train.eval_every=100",
        "train.warmup_steps=0", "train.lr=5e-3", f"output.dir={root}",
    ]  # fmt: skip
    summaries = {
        mode: train(config.load(SEED_CONFIG, [*common, f"output.name={mode}", f"data.long_texts={mode}",
                                              "data.stride=4"]))
        for mode in ("truncate", "chunk")
    }  # fmt: skip
    return root, summaries


def test_chunking_reads_the_words_past_the_first_window_that_truncation_never_sees(late_runs):
    _, summaries = late_runs
    truncated, chunked = summaries["truncate"].peak_val_accuracy, summaries["chunk"].peak_val_accuracy
    assert chunked >= truncated + 0.2, (truncated, chunked)
    assert summaries["chunk"].val_rows == 96  # scored once per text, not once per window


def test_predict_answers_each_long_text_once_in_input_order_in_a_fresh_process(late_runs, tmp_path):
    root, _ = late_runs
    rows = late_words_rows(40, seed=7)
    source = write_csv(tmp_path / "in.csv", [(text,) for _, text in rows], ("text",))
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [sys.executable, "-m", "loralab.cli", "predict", str(root / "chunk"), "--input", str(source), "--out",
         str(out), "--precision", "fp32"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # no library's deprecation notice reaches the user
    with open(out) as handle:
        answers = list(csv.DictReader(handle))
    assert [int(a["ID"]) for a in answers] == list(range(40))
    assert sum(int(a["Label"]) == label for a, (label, _) in zip(answers, rows)) >= 30


def test_serve_answers_each_long_text_once_as_predict_does(late_runs, tmp_path):
    root, _ = late_runs
    rows = late_words_rows(12, seed=8)
    source = write_csv(tmp_path / "in.csv", [(text,) for _, text in rows], ("text",))
    out = tmp_path / "out.csv"
    assert main(["predict", str(root / "chunk"), "--input", str(source), "--out", str(out), "--label-names",
                 "--precision", "fp32"]) == 0  # fmt: skip
    with open(out) as handle:
        predicted = [a["Label"] for a in csv.DictReader(handle)]
    process, port = start(str(root / "chunk"))
    status, body = call(port, "POST", "/v1/classify", {"texts": [text for _, text in rows]})
    stop(process)
    assert status == 200
    assert body["labels"] == predicted  # one answer per text, in order, from the windows' mean logits
    assert len(set(predicted)) > 1  # the texts are not all answered alike: the comparison is not vacuous


def test_chunking_settings_that_cannot_work_are_one_line():
    with pytest.raises(LoralabError, match="data.long_texts: 'windows' is not one of truncate, chunk"):
        config.load(SEED_CONFIG, ["data.long_texts=windows"])
    with pytest.raises(LoralabError, match="data.stride: 300 must be 0 to half of data.max_length"):
        config.load(SEED_CONFIG, ["data.long_texts=chunk", "data.stride=300"])
    # Unset, the stride follows max_length: a short max_length is not refused for a stride the user never set.
    short = config.load(SEED_CONFIG, ["data.long_texts=chunk", "data.max_length=32"])
    assert short.data.stride is None and short.data.window_stride() == 8
    with pytest.raises(LoralabError, match="chunk reads single texts"):
        config.load(SEED_CONFIG, ["data.long_texts=chunk", "data.text_pair_column=b"])
