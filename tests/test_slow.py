"""Real pretrained model on real data, through the installed `loralab` command."""

import json
import subprocess

import pytest
from conftest import AG_NEWS_CSV, SEED_CONFIG, SHARED

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not AG_NEWS_CSV.exists(), reason="../shared (real AG News rows, offline models) is not beside the repo"),
]


@pytest.fixture(scope="module")
def minilm() -> str:
    out = subprocess.run([str(SHARED / "tools" / "offline-models"), "minilm-l6"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"offline-models minilm-l6 failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout.strip()


def test_minilm_on_real_ag_news(minilm, tmp_path):
    command = [
        "loralab", "train", "--config", str(SEED_CONFIG),
        f"model.name={minilm}", f"data.train={AG_NEWS_CSV}", "data.val_size=320",
        "train.steps=40", "train.warmup_steps=5", "train.lr=5e-4", "train.eval_every=20", "train.log_every=10",
        f"output.dir={tmp_path}", "output.name=minilm",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("trainable parameters (budget 1,000,000)")
    run = tmp_path / "minilm"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable"]["total"] == 250_756  # 6 x value r22 (101,376) + pooler and classifier (149,380)
    assert summary["steps_done"] == 40 and summary["val_rows"] == 320
    assert summary["peak_val_accuracy"] > 0.4  # chance is 0.25; 40 steps of real news already beat it
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [20, 40]
    for folder in ("best", "last"):
        assert (run / folder / "adapter_model.safetensors").exists()
