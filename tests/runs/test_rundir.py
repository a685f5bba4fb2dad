"""A saved run gives back what it trained, met the way a user meets it: written by one process
(training here), read by a fresh one (`loralab eval`, plain transformers, the model card's snippet)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAMILIES, ROOT, SEED_CONFIG, train_tiny

from loralab.cli import main
from loralab.data import load_labelled, split_validation
from loralab.runs.frozen import FROZEN_WEIGHTS
from loralab.runs.rundir import RunDir, Summary

HEADS = ["full", "out_proj", "lora"]
POOLINGS = ["first", "mean"]
# Every variant on the hard case: a frozen random classifier.dense under the adapter.
VARIANTS = {
    "rslora": ["lora.use_rslora=true"],
    "dora": ["lora.use_dora=true"],
    "bias": ["lora.bias=lora_only"],
    "layers": ["lora.layers=[1]"],
    "rank_pattern": ["lora.rank_pattern={1: 6}"],
    "pissa": ["lora.init=pissa"],
    "olora": ["lora.init=olora"],
    # The other methods, through PEFT: VeRA's shared random matrices saved with it, FourierFT's frequencies drawn
    # again from the seed in its config, IA3's vectors.
    "vera": ["lora.method=vera", "lora.r=16", "lora.alpha=16"],
    "fourierft": ["lora.method=fourierft", "lora.n_frequency=64", "lora.alpha=100"],
    "ia3": ["lora.method=ia3", "train.lr=5e-2"],
    # BitFit, outside PEFT: the adapted layers' biases and the head in files of its own.
    "bitfit": ["lora.method=bitfit", "lora.scope=[query,value,ffn_out]", "train.lr=5e-2"],
    # AdaLoRA: its pruned ranks saved in PEFT's rank_pattern, read back resized.
    "adalora": ["lora.method=adalora", "lora.r=2", "train.steps=12"],
}


def combinations():
    for family in FAMILIES:
        # DistilBERT's head modes other than full would also train pre_classifier (refused by the plan).
        for head in HEADS if family != "distilbert" else ["full"]:
            for pooling in POOLINGS:
                yield f"{family}-{head}-{pooling}", family, [f"model.head={head}", f"model.pooling={pooling}"]
    for name, overrides in VARIANTS.items():
        yield f"variant-{name}", "roberta", ["model.head=out_proj", *overrides]
    yield "full-finetune", "roberta", ["model.finetune=full", "train.lr=1e-3"]


def fresh_python(script: str, cwd: Path | None = None, block_peft: bool = False) -> list:
    """Run `script` in a new interpreter; it prints one JSON value as its last line."""
    prelude = "import sys\nsys.modules['peft'] = None  # importing peft now fails\n" if block_peft else ""
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", prelude + script], capture_output=True, text=True, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(model_dirs, tiny_data, tmp_path_factory):
    """Every family x head mode x pooling, and each variant: name -> run directory."""
    root = tmp_path_factory.mktemp("matrix")
    runs = {}
    for name, family, extra in combinations():
        train_tiny(model_dirs[family], tiny_data, root, name, "train.eval_batch_size=64", *extra)
        runs[name] = root / name
    return runs


@pytest.fixture(scope="module")
def val_texts(trained):
    cfg = RunDir(next(iter(trained.values()))).read_config()
    return split_validation(load_labelled(cfg.data.train, cfg.data), cfg.data.val_size, cfg.data.split_seed)[1].texts


def test_frozen_random_weights_are_saved_where_a_head_depends_on_them(trained):
    # RoBERTa/MPNet's classifier.dense and DeBERTa's pooler are not in the checkpoint; BERT's pooler is.
    expected = {
        "roberta": "classifier.dense.weight",
        "mpnet": "classifier.dense.weight",
        "deberta-v2": "pooler.dense.weight",
    }
    from safetensors.torch import load_file

    for name, run in trained.items():
        if name == "full-finetune":
            continue
        family, head, _ = name.rsplit("-", 2) if not name.startswith("variant") else ("roberta", "out_proj", "")
        saved = run / "best" / FROZEN_WEIGHTS
        if head != "full" and family in expected:
            assert expected[family] in load_file(str(saved)), name
        else:
            assert not saved.exists(), name


def eval_in_a_fresh_process(runs: list[Path], *flags: str, last: tuple[Path, ...] = ()) -> list[dict]:
    """`loralab eval RUN --which best --json` of every run (and `--which last` of the runs in `last`), in one
    new interpreter."""
    wanted = [(str(p), "best") for p in runs] + [(str(p), "last") for p in last]
    script = f"""
from loralab.cli import main
for run, which in {wanted!r}:
    assert main(["eval", run, "--which", which, "--json", *{list(flags)!r}]) == 0
"""
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(wanted)  # --json: one object per command, nothing else on stdout
    return reports


def assert_gives_back_what_it_reported(report: dict) -> None:
    """Eval's answers are the ones training saved at that evaluation, row for row and bit for bit, and so
    is the metric the summary reported."""
    run = RunDir(Path(report["run"]))
    saved = run.read_predictions(report["adapter"])
    evaluated = json.loads((Path(report["saved_in"]) / "predictions.json").read_text())
    where = f"{run.path.name} {report['adapter']}"
    assert evaluated["labels"] == saved.labels, where
    assert len(saved.predictions) == len(saved.labels) > 0
    assert evaluated["predictions"] == saved.predictions, where
    assert evaluated["scores"] == saved.scores, where
    summary = run.read_summary()
    expected = summary.peak_val_accuracy if report["adapter"] == "best" else summary.final["accuracy"]
    assert report["accuracy"] == expected, where


def test_eval_in_a_fresh_process_gives_the_saved_predictions_row_for_row(trained):
    # The default: the precision it trained in. The last evaluation's adapter too, for each head mode.
    last = tuple(trained[f"roberta-{head}-first"] for head in HEADS)
    for report in eval_in_a_fresh_process(list(trained.values()), last=last):
        assert report["engine"]["precision"]["used"] == "fp32"
        assert_gives_back_what_it_reported(report)


def test_a_run_trained_in_bf16_gives_back_its_own_predictions_in_bf16(model_dirs, tiny_data, tmp_path):
    """Half precision rounds differently when the adapter is merged into the weights: eval runs the adapter
    as training evaluated it, in the precision it trained in (bf16 is run even where it is emulated)."""
    runs = []
    for head in HEADS:  # RoBERTa's random classifier.dense: frozen under out_proj and lora, trained under full
        overrides = [f"model.head={head}", "train.precision=bf16", "data.val_size=200", "train.eval_batch_size=64"]
        train_tiny(model_dirs["roberta"], tiny_data, tmp_path, f"bf16-{head}", *overrides)
        runs.append(tmp_path / f"bf16-{head}")
    reports = eval_in_a_fresh_process(runs, last=tuple(runs))
    for report in reports:
        assert report["engine"]["precision"]["used"] == "bf16"
        assert_gives_back_what_it_reported(report)
    fp32 = eval_in_a_fresh_process(runs[:1], "--precision", "fp32")  # the comparison is not vacuous
    assert json.loads((Path(fp32[0]["saved_in"]) / "predictions.json").read_text())["scores"] != (
        RunDir(runs[0]).read_predictions("best").scores
    )


CLASSIFY = """
import json, torch
texts = json.load(open(TEXTS))
with torch.no_grad():
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    logits = model(**batch).logits.tolist()
"""


def assert_same_labels(logits: list[list[float]], predictions: list[int], name: str) -> None:
    """The saved label is the argmax (a tie within float noise may go either way)."""
    assert len(logits) == len(predictions) > 0, name
    for row, (scores, label) in enumerate(zip(logits, predictions, strict=True)):
        assert scores[label] >= max(scores) - 1e-4, f"{name}: row {row} predicted {label}, logits {scores}"


def classify_in_fresh_process(
    loaders: dict[str, str], folders: dict[str, Path], texts: list[str], tmp_path: Path, block_peft: bool = False
) -> dict[str, list]:
    """Run each loading snippet (which defines `model` and `tokenizer`) in its folder, all in one new
    interpreter, and return each one's logits on the validation texts."""
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = f"""
import json, os
TEXTS = {str(tmp_path / "texts.json")!r}
results = {{}}
for name, (folder, code) in json.loads({json.dumps({n: (str(folders[n]), loaders[n]) for n in loaders})!r}).items():
    os.chdir(folder)
    scope = {{"TEXTS": TEXTS}}
    exec(code + {CLASSIFY!r}, scope)
    results[name] = scope["logits"]
print(json.dumps(results))
"""
    return fresh_python(script, block_peft=block_peft)


def test_merged_export_loads_with_plain_transformers_and_gives_the_same_labels(trained, val_texts, tmp_path):
    plain = """
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(".").eval()
tokenizer = AutoTokenizer.from_pretrained(".")
"""
    folders = {}
    for name, run in trained.items():
        if name.endswith("-mean"):
            continue  # a plain head reads the first token: refused, see test_inference
        folders[name] = tmp_path / name
        assert main(["export", str(run), str(folders[name])]) == 0
    logits = classify_in_fresh_process(dict.fromkeys(folders, plain), folders, val_texts, tmp_path, block_peft=True)
    for name in folders:
        assert_same_labels(logits[name], RunDir(trained[name]).read_predictions("best").predictions, name)


def snippet(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def test_adapter_only_export_loads_the_way_its_model_card_says(trained, val_texts, tmp_path):
    folders, loaders = {}, {}
    for name, run in trained.items():
        if name == "full-finetune":  # no adapter to export
            assert main(["export", str(run), str(tmp_path / name), "--adapter-only"]) == 2
            continue
        folders[name] = tmp_path / name
        assert main(["export", str(run), str(folders[name]), "--adapter-only"]) == 0
        loaders[name] = snippet((folders[name] / "README.md").read_text())
    logits = classify_in_fresh_process(loaders, folders, val_texts, tmp_path)
    for name in folders:
        assert_same_labels(logits[name], RunDir(trained[name]).read_predictions("best").predictions, name)
    # Each card names its own method and settings, and the library that loads it.
    cards = {name: (folder / "README.md").read_text() for name, folder in folders.items()}
    assert "LoRA adapter for" in cards["roberta-full-first"] and "r=4, alpha=44" in cards["roberta-full-first"]
    assert "(IA)^3 adapter (one trained scaling vector" in cards["variant-ia3"] and "r=" not in cards["variant-ia3"]
    assert "FourierFT adapter" in cards["variant-fourierft"] and "n_frequency=64" in cards["variant-fourierft"]
    assert "BitFit weights" in cards["variant-bitfit"] and "library_name: transformers" in cards["variant-bitfit"]
    assert "VeRA adapter" in cards["variant-vera"] and "AdaLoRA adapter" in cards["variant-adalora"]


def test_a_run_saved_without_its_frozen_weights_is_refused(trained, tmp_path, capsys):
    """A run of loralab 0.1 with head out_proj: its classifier.dense was never saved."""
    import shutil

    old = tmp_path / "old-run"
    shutil.copytree(trained["roberta-out_proj-first"], old, ignore=shutil.ignore_patterns("eval"))
    for folder in ("best", "last"):
        (old / folder / FROZEN_WEIGHTS).unlink()
    texts = tmp_path / "in.csv"
    texts.write_text("text\nc0w1 f3 f4\n")
    commands = {
        "eval": ["eval", str(old)],
        "predict": ["predict", str(old), "--input", str(texts), "--out", str(tmp_path / "p.csv")],
        "export": ["export", str(old), str(tmp_path / "merged")],
        "export --adapter-only": ["export", str(old), str(tmp_path / "adapter"), "--adapter-only"],
    }
    for what, command in commands.items():
        assert main(command) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("loralab: error:"), what
        assert "cannot be reproduced" in err[0] and "classifier.dense.weight" in err[0] and "train it again" in err[0]
    assert (
        not (tmp_path / "p.csv").exists() and not (tmp_path / "merged").exists() and not (tmp_path / "adapter").exists()
    )
    assert not (old / "eval").exists()
    # A full-head run needs no saved frozen weights: one without the file still loads.
    assert main(["eval", str(trained["roberta-full-first"])]) == 0


def test_full_finetuning_trains_every_weight_with_no_budget(trained, model_dirs):
    from transformers import AutoModelForSequenceClassification

    summary = RunDir(trained["full-finetune"]).read_summary()
    every = sum(
        p.numel()
        for p in AutoModelForSequenceClassification.from_pretrained(model_dirs["roberta"], num_labels=4).parameters()
    )
    assert summary.trainable["total"] == every and summary.trainable["budget"] is None
    assert summary.trainable["headroom"] is None and summary.trainable["rows"] == {
        "every weight (full fine-tuning)": every
    }
    assert not (trained["full-finetune"] / "best" / "adapter_config.json").exists()


def test_summary_reads_back_as_written_and_ignores_unknown_keys(tmp_path):
    run = RunDir(tmp_path)
    summary = Summary(
        name="x",
        peak_val_accuracy=0.5,
        peak_step=4,
        final={"step": 8, "accuracy": 0.4},
        steps_done=8,
        val_rows=64,
        trainable={"total": 10},
    )
    run.write_summary(summary)
    assert run.read_summary() == summary
    data = json.loads(run.summary.read_text()) | {"written_by_a_newer_version": 1}
    run.summary.write_text(json.dumps(data))
    assert run.read_summary() == summary


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(tiny_overrides, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    # A real full disk: a small tmpfs (needs root, as CI has; skipped elsewhere).
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=650k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        argv = ["train", "--config", str(SEED_CONFIG), *tiny_overrides, f"output.dir={disk}", "output.name=full",
                "model.finetune=full", "train.steps=12", "train.eval_every=4"]  # fmt: skip
        assert main(argv) == 2
        captured = capsys.readouterr()
        err = [line for line in captured.err.splitlines() if line.startswith("loralab:")]
        assert len(err) == 1 and "no space left on the disk" in err[0] and "needed" in err[0], err
        assert str(disk / "full") in err[0]
        run = RunDir(disk / "full")
        assert not run.summary.exists() and not list(run.path.glob(".*.tmp")) and not list(run.path.glob(".best.*"))
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)  # room again
        assert main([*argv, "--resume"]) == 0
        assert "resumed" in capsys.readouterr().out  # from the checkpoint written before the disk filled
        assert [r["step"] for r in run.read_metrics() if r["split"] == "val"] == [4, 8, 12]
        assert run.read_summary().steps_done == 12
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_run_travels_relative_paths_resolve_and_trackers_matter_only_to_training(
    model_dirs, tiny_data, tmp_path, monkeypatch, capsys
):
    """Trained in one folder with a relative data.validation, then read from another, on a machine without
    the tracker it reported to: listed, evaluated and predicted with; only training asks for the tracker."""
    from conftest import synthetic_rows, write_csv

    work = tmp_path / "work"
    work.mkdir()
    write_csv(work / "dev.csv", synthetic_rows(40, seed=5))
    monkeypatch.chdir(work)
    overrides = [f"model.name={model_dirs['roberta']}", f"data.train={tiny_data}", "data.validation=dev.csv",
                 "data.max_length=32", "lora.r=4", "train.steps=4", "train.eval_every=4", "train.batch_size=16",
                 "output.dir=runs", "output.name=travelling"]  # fmt: skip
    assert main(["train", "--config", str(SEED_CONFIG), *overrides]) == 0
    run = work / "runs" / "travelling"
    # What a machine without the tracker sees: a run that reported to one that is not installed here.
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("report_to: []", "report_to:\n  - aim"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0  # its validation rows: dev.csv, found from here
    assert json.loads(capsys.readouterr().out)["rows"] == 40
    assert main(["runs", str(run)]) == 0 and "travelling" in capsys.readouterr().out
    texts = write_csv(elsewhere / "in.csv", [(t,) for _, t in synthetic_rows(5)], ("text",))
    assert main(["predict", str(run), "--input", str(texts), "--out", "p.csv"]) == 0
    assert main(["train", "--config", str(saved), "output.name=again"]) == 2
    assert "train.report_to: aim is not installed (pip install aim)" in capsys.readouterr().err
