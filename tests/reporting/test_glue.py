"""The GLUE sweep file and the GLUE table of the report."""

import shutil

import pytest
import yaml
from conftest import ROOT, pair_rows, write_csv

from loralab.config import metric_for_best
from loralab.reporting.glue import PAPER_ROBERTA_BASE_LORA, glue_table
from loralab.reporting.report import build_report
from loralab.runs.results import find_runs
from loralab.sweeps.sweep import read_sweep
from loralab.sweeps.sweepfile import check_budgets, trial_config


def test_the_glue_sweep_is_valid_offline_and_scores_each_task_as_the_paper():
    sweep = read_sweep(ROOT / "configs" / "sweeps" / "glue.yaml")
    feasible, rejected = check_budgets(sweep, "runs")  # roberta-base's config ships: no network
    assert rejected == [] and sorted(t.label for t in feasible) == sorted(PAPER_ROBERTA_BASE_LORA)
    for trial in feasible:
        cfg = trial_config(sweep, trial, "runs")
        # A metric other than the paper's would leave the task out of the GLUE table.
        assert metric_for_best(cfg) == PAPER_ROBERTA_BASE_LORA[trial.label][0], trial.label
        assert (cfg.lora.scope, cfg.lora.r, cfg.train.batch_size, cfg.train.warmup_ratio) == (
            ["query", "value"], 8, 16, 0.06
        )  # fmt: skip


def test_glue_table_beside_the_paper(model_dirs, tiny_data, tmp_path):
    from conftest import SEED_CONFIG, train_tiny

    from loralab import config
    from loralab.training.train import train

    data = write_csv(tmp_path / "pairs.csv", pair_rows(200), ("label", "sentence1", "sentence2"))
    runs = tmp_path / "runs"
    for seed in (0, 1):
        train(config.load(SEED_CONFIG, [
            f"model.name={model_dirs['roberta']}", f"data.train={data}", "data.text_column=sentence1",
            "data.text_pair_column=sentence2", "data.label_names=[different, same]", "data.val_size=64",
            "data.max_length=32", "lora.r=2", "train.steps=12", "train.batch_size=16", "train.eval_every=4",
            f"train.seed={seed}", f"output.dir={runs}", f"output.name=mrpc-{seed}",
        ]))  # fmt: skip
    # As a run of `loralab sweep configs/sweeps/glue.yaml` names its data (GLUE itself is on the hub).
    for seed in (0, 1):
        path = runs / f"mrpc-{seed}" / "config.yaml"
        saved = yaml.safe_load(path.read_text())
        saved["data"] |= {"train": "nyu-mll/glue", "subset": "mrpc"}
        path.write_text(yaml.safe_dump(saved))
    shutil.copytree(runs / "mrpc-0", runs / "rte-0")  # a second task: RTE, one seed
    rte = yaml.safe_load((runs / "rte-0" / "config.yaml").read_text())
    rte["data"]["subset"] = "rte"
    (runs / "rte-0" / "config.yaml").write_text(yaml.safe_dump(rte))
    records = find_runs([str(runs)])
    mrpc, rte_row, average = glue_table(records)
    peaks = sorted(100 * r.peak for r in records if r.config.data.subset == "mrpc")
    assert mrpc["task"] == "mrpc" and mrpc["seeds"] == 2 and mrpc["ours"] == pytest.approx(sum(peaks) / 2)
    from scipy.stats import t

    half = t.ppf(0.975, 1) * abs(peaks[1] - peaks[0]) / 2**0.5 / 2**0.5  # sd of two values / sqrt(2), 1 df
    assert mrpc["ci"] == pytest.approx([mrpc["ours"] - half, mrpc["ours"] + half])
    assert mrpc["difference"] == pytest.approx(mrpc["ours"] - 89.7)
    assert rte_row["seeds"] == 1 and rte_row["paper"] == 86.6
    assert average["task"] == "average of 2 tasks" and average["paper"] == pytest.approx((89.7 + 86.6) / 2)
    page = build_report(records)
    assert "<h2>GLUE</h2>" in page and "paper (LoRA, 0.3M)" in page
    # Runs on other data: no GLUE section.
    train_tiny(model_dirs["roberta"], tiny_data, tmp_path / "plain", "plain")
    assert "<h2>GLUE</h2>" not in build_report(find_runs([str(tmp_path / "plain")]))
