"""train.compile: batches padded to length buckets compute what unpadded ones do, and a compiled step what an
uncompiled one does. The capture as CUDA graphs runs only where CUDA is (the device check runs it there)."""

from __future__ import annotations

import pytest
import torch
from conftest import SEED_CONFIG, make_tokenizer

from loralab import config, hardware
from loralab.encoding import collate, encode, length_buckets, training_batches
from loralab.runs.rundir import RunDir
from loralab.training.train import train


def test_buckets_cover_every_batch_and_are_few():
    lengths = [5 + (i * 37) % 120 for i in range(1000)]
    buckets = length_buckets(lengths, 16, seed=1)
    assert 2 <= len(buckets) <= 4 and buckets[-1] == max(lengths)
    assert all(b % 8 == 0 for b in buckets[:-1]) and buckets == sorted(buckets)
    for epoch in range(3):  # every epoch's batches fit a bucket, whatever their order
        for batch in training_batches(lengths, 16, 1, epoch):
            assert max(lengths[i] for i in batch) <= buckets[-1]


def test_bucketed_padding_changes_no_logit_in_fp32(model_dirs):
    """The same rows padded to a bucket and to their own longest give the same logits: the pads are masked."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = make_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(model_dirs["roberta"], num_labels=4).eval()
    texts = ["alpha beta", "gamma delta epsilon zeta", "eta", "theta iota kappa"]
    data = encode(tokenizer, texts, None, 32, False, [0, 1, 2, 3])
    own = collate(tokenizer, data, [0, 1, 2, 3])
    bucketed = collate(tokenizer, data, [0, 1, 2, 3], buckets=[4, 24, 32])
    assert bucketed["input_ids"].shape[1] == 24 > own["input_ids"].shape[1]
    with torch.no_grad():
        a = model(**{k: v for k, v in own.items() if k != "labels"}).logits
        b = model(**{k: v for k, v in bucketed.items() if k != "labels"}).logits
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_compile_auto_is_off_where_it_was_not_measured_to_pay_and_says_why():
    for where in ("cuda", "cpu"):
        on, line = hardware.resolve_compile("auto", torch.device(where))
        assert on is False and line.startswith("compile off (auto: ") and "measured" in line
    assert hardware.resolve_compile("on", torch.device("cpu")) == (True, "compile on (set explicitly)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs are captured only on CUDA")
def test_a_step_captured_as_cuda_graphs_trains_what_the_uncompiled_step_trains(no_dropout_model, tiny_data, tmp_path):
    """train.compile on (CUDA graphs over length buckets) against off, fp32, no dropout (compiled kernels draw their
    masks from another generator): the same losses and peak, within the rounding of fused kernels."""
    common = [f"model.name={no_dropout_model}", f"data.train={tiny_data}", "data.val_size=64",
              "data.max_length=32", "lora.dropout=0", "train.steps=24", "train.batch_size=8", "train.eval_every=12",
              "train.log_every=4", f"output.dir={tmp_path}"]  # fmt: skip
    for setting in ("off", "on"):
        train(config.load(SEED_CONFIG, [*common, f"train.compile={setting}", f"output.name={setting}"]))
    off, on = RunDir(tmp_path / "off"), RunDir(tmp_path / "on")
    losses = [[row["loss"] for row in run.read_metrics() if row["split"] == "train"] for run in (off, on)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    assert on.read_summary().peak == pytest.approx(off.read_summary().peak, abs=1 / 64)
