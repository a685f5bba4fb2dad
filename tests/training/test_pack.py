"""Packed trials (training/pack.py): a trial trained in a pack is the trial trained alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SEED_CONFIG
from safetensors.torch import load_file

from loralab import config
from loralab.runs.rundir import RunDir
from loralab.training.pack import pack_key, train_pack, why_alone
from loralab.training.train import train

# Three trials that differ in what a pack lets differ: seed, learning rate, rank (and so the stacks' padding).
TRIALS = {
    "a": ["train.seed=1", "train.lr=1e-2", "lora.r=4", "lora.alpha=8"],
    "b": ["train.seed=2", "train.lr=3e-3", "lora.r=2", "lora.alpha=2", "train.warmup_steps=5"],
    "c": ["train.seed=3", "train.lr=2e-2", "lora.r=8", "lora.alpha=8", "train.eval_every=5"],
}


def trial_configs(model: Path, data: Path, out: Path, steps: int = 20, extra=()) -> list:
    common = [f"model.name={model}", f"data.train={data}", "data.val_size=64", "data.max_length=32",
              "lora.dropout=0", f"train.steps={steps}", "train.batch_size=8", "train.eval_every=10",
              "train.log_every=5", "train.warmup_steps=2", f"output.dir={out}", *extra]  # fmt: skip
    return [config.load(SEED_CONFIG, [*common, *settings, f"output.name={name}"]) for name, settings in TRIALS.items()]


def weights(run: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(str(next((run / which).glob("adapter_model.safetensors"))))


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("samples_per_s", "elapsed_s")} for row in rows]


def assert_same_run(alone: Path, packed: Path) -> None:
    for which in ("best", "last"):
        a, p = weights(alone, which), weights(packed, which)
        assert a.keys() == p.keys()
        for name in a:
            torch.testing.assert_close(p[name], a[name], rtol=1e-5, atol=1e-6, msg=f"{packed.name} {which} {name}")
    a_rows, p_rows = metrics(alone), metrics(packed)
    assert [(r["step"], r["split"]) for r in a_rows] == [(r["step"], r["split"]) for r in p_rows]
    for a_row, p_row in zip(a_rows, p_rows):
        for key, value in a_row.items():
            assert p_row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"{packed.name} {a_row['step']} {key}"


def test_a_packed_trial_is_the_trial_alone(no_dropout_model, tiny_data, tmp_path):
    """Every trial's adapter, head and metrics.jsonl equal the same trial trained alone (fp32, no dropout); and
    each packed run directory is a run: `eval` reads it in a fresh process (test_rundir covers that path)."""
    alone = trial_configs(no_dropout_model, tiny_data, tmp_path / "alone")
    for cfg in alone:
        train(cfg)
    packed = trial_configs(no_dropout_model, tiny_data, tmp_path / "packed")
    assert len({pack_key(cfg) for cfg in packed}) == 1 and not any(why_alone(cfg) for cfg in packed)
    results = train_pack(packed, [False] * len(packed))
    assert all(not isinstance(r, Exception) for r in results), results
    for name in TRIALS:
        assert_same_run(tmp_path / "alone" / name, tmp_path / "packed" / name)
        summary = RunDir(tmp_path / "packed" / name).read_summary()
        assert summary.steps_done == 20 and summary.peak == pytest.approx(
            RunDir(tmp_path / "alone" / name).read_summary().peak
        )


def test_a_trial_that_diverges_leaves_the_pack_and_the_others_finish(no_dropout_model, tiny_data, tmp_path):
    """One trial's loss becomes NaN (lr inf makes it NaN on any device; lr 1e30 stayed finite on CUDA): it fails
    with one line in its run folder, the others train to their end unharmed (as they train alone), and a fresh
    process reads their runs."""
    cfgs = trial_configs(no_dropout_model, tiny_data, tmp_path / "packed")
    cfgs[1] = config.load(SEED_CONFIG, [f"{k}={v}" for k, v in cfgs[1].flat().items() if k in (
        "model.name", "data.train", "data.val_size", "data.max_length", "lora.dropout", "train.steps",
        "train.batch_size", "train.log_every", "output.dir", "output.name")] + ["train.lr=inf"])  # fmt: skip
    results = train_pack(cfgs, [False] * 3)
    assert isinstance(results[1], Exception) and "diverged" in str(results[1])
    failure = (tmp_path / "packed" / "b" / "failure.txt").read_text()
    assert failure.count("\n") == 1 and "the training loss became nan" in failure and "lower train.lr" in failure
    assert not (tmp_path / "packed" / "b" / "summary.json").exists()
    train(trial_configs(no_dropout_model, tiny_data, tmp_path / "alone")[2])
    assert_same_run(tmp_path / "alone" / "c", tmp_path / "packed" / "c")
    for name in ("a", "c"):
        out = subprocess.run([sys.executable, "-m", "loralab.cli", "eval", str(tmp_path / "packed" / name)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        assert "accuracy" in out.stdout
