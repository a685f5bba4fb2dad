"""Bad input, table-driven: every case ends in one `loralab: error:` line naming the problem, exit 2,
and nothing written (the whole test folder is the same before and after)."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SEED_CONFIG, SEED_STUDY, make_model_dir, synthetic_rows, write_csv

from loralab import config
from loralab.cli import main
from loralab.training.train import train


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_dirs, tiny_data):
    """Models, data files, runs and sweep files, good and bad, written once."""
    root = tmp_path_factory.mktemp("bad-input")
    e = SimpleNamespace(root=root, model=model_dirs["roberta"], distilbert=model_dirs["distilbert"], data=tiny_data)
    files = {
        "malformed.csv": 'label,text\n0,"open\n',
        "body.csv": "label,body\n0,x\n",
        "nolabel.csv": "text\nx y\n",
        "label9.csv": "label,text\n9,x\n",
        "labelabc.csv": "label,text\nabc,x\n",
        "emptytext.csv": 'label,text\n0,""\n',
        "header.csv": "label,text\n",
        "strings.jsonl": '{"label": "foo", "text": "x"}\n',
        "data.txt": "0 x\n",
        "texts.csv": "text\nc0w1 f2 f3\n",
        "bodies.csv": "body\nx\n",
        "list.yaml": "- model\n",
        "bad.yaml": "train: [unclosed\n",
        "empty.yaml": "",
        "model3.yaml": "model: 3\n",
        "corrupt.pkl": "not a pickle at all",
        "dataset.pkl": "",
        "a-file": "x",
        "sweep-nobase.yaml": "groups: {g: {grid: {lora.r: [1]}}}\n",
        "sweep-key.yaml": f"base: {SEED_CONFIG}\nbogus: 1\ngroups: {{g: {{grid: {{lora.r: [1]}}}}}}\n",
        "sweep-axis.yaml": f"base: {SEED_CONFIG}\ngroups: {{g: {{grid: {{lora.rank: [1]}}}}}}\n",
        "sweep-zip.yaml": f"base: {SEED_CONFIG}\ngroups: {{g: {{zip: {{lora.r: [1, 2], lora.alpha: [1]}}}}}}\n",
        "sweep-alpha.yaml": f"base: {SEED_CONFIG}\ngroups: {{g: {{set: {{lora.alpha: r*x}}}}}}\n",
        "search-space.yaml": f"base: {SEED_CONFIG}\nspace: {{train.lr: {{low: 1e-5}}}}\n",
        "sweep-ok.yaml": f"base: {SEED_CONFIG}\noverrides: [model.name={e.model}, data.train={e.data}]\n"
        "groups: {g: {grid: {lora.r: [1]}}}\n",
        "duplicate.yaml": "model:\n  head: full\nlora:\n  r: 2\nmodel:\n  name: x\n",
        "duplicate-key.yaml": "train:\n  lr: 1.0e-3\n  steps: 2\n  lr: 2.0e-3\n",
        "fraction.jsonl": '{"label": 0, "text": "a"}\n{"label": 0.5, "text": "b"}\n',
        "badline.jsonl": '{"label": 0, "text": "a"}\n{"label": 1, "text": \n',
        "mixed.csv": "label,text\n0,a\npos,b\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.csv").write_bytes("label,text\n0,caf\xe9\n".encode("latin-1"))
    (root / "out-dir").mkdir()
    (root / "full-dir").mkdir()
    (root / "full-dir" / "x").write_text("x")
    no_tokenizer = root / "no-tokenizer"
    make_model_dir(no_tokenizer)
    for path in no_tokenizer.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            path.unlink()
    no_weights = root / "no-weights"
    no_weights.mkdir()
    shutil.copy(e.model / "config.json", no_weights)
    no_config = root / "no-config"
    shutil.copytree(e.model, no_config)
    (no_config / "config.json").unlink()
    e.no_tokenizer, e.no_weights, e.no_config = no_tokenizer, no_weights, no_config
    e.train = tiny_args(e, root / "runs")
    train(config.load(SEED_CONFIG, e.train[3:]))
    e.run = root / "runs" / "tiny"
    e.unfinished = root / "runs" / "unfinished"
    shutil.copytree(e.run, e.unfinished)
    (e.unfinished / "summary.json").unlink()
    (e.unfinished / "config.yaml").write_text(
        (e.run / "config.yaml").read_text().replace("name: tiny", "name: unfinished")
    )
    e.half = root / "half"
    e.half.mkdir()
    shutil.copy(e.run / "config.yaml", e.half)
    shutil.copytree(e.run / "best", e.half / "best")
    e.out = root / "runs-out"
    e.fresh = tiny_args(e, e.out)
    # A run on a file that then changes (200 rows appended), and an unfinished copy of it.
    e.changing = root / "changing.csv"
    shutil.copy(e.data, e.changing)
    e.changing_args = [*tiny_args(e, root / "runs-changing"), f"data.train={e.changing}"]
    train(config.load(SEED_CONFIG, e.changing_args[3:]))
    e.changed_run = root / "runs-changing" / "tiny"
    unfinished = root / "runs-changing" / "unfinished"
    shutil.copytree(e.changed_run, unfinished)
    (unfinished / "summary.json").unlink()
    (unfinished / "config.yaml").write_text(
        (unfinished / "config.yaml").read_text().replace("name: tiny", "name: unfinished")
    )
    with open(e.changing, "a", newline="") as handle:
        csv.writer(handle).writerows(synthetic_rows(200, seed=9))
    return e


def tiny_args(e, out_dir: Path) -> list[str]:
    return ["train", "--config", str(SEED_CONFIG), f"model.name={e.model}", f"data.train={e.data}",
            "data.val_size=32", "data.max_length=32", "lora.r=2", "lora.alpha=4", "train.steps=2",
            "train.batch_size=8", "train.eval_every=2", "train.warmup_steps=0", f"output.dir={out_dir}",
            "output.name=tiny"]  # fmt: skip


def with_data(e, name):
    return [*e.fresh, f"data.train={e.root / name}"]


CASES = {
    # config keys and values
    "unknown section": (lambda e: [*e.fresh, "foo.bar=1"], "unknown config key 'foo'"),
    "unknown key": (lambda e: [*e.fresh, "train.step=3"], "unknown config key 'train.step'"),
    "override without =": (lambda e: [*e.fresh, "lora.r"], "expected section.key=value"),
    "override without section": (lambda e: [*e.fresh, "r=3"], "expected section.key=value"),
    "override bad yaml": (lambda e: [*e.fresh, "lora.scope=[value"], "bad value"),
    "rank 0": (lambda e: [*e.fresh, "lora.r=0"], "lora.r: must be >= 1"),
    "rank text": (lambda e: [*e.fresh, "lora.r=abc"], "lora.r: expected int"),
    "alpha negative": (lambda e: [*e.fresh, "lora.alpha=-1"], "lora.alpha: must be > 0"),
    "dropout 1.5": (lambda e: [*e.fresh, "lora.dropout=1.5"], "lora.dropout"),
    "empty scope": (lambda e: [*e.fresh, "lora.scope=[]"], "lora.scope: name at least one"),
    "unknown scope": (lambda e: [*e.fresh, "lora.scope=[valu]"], "unknown scope name 'valu'"),
    "scope not a list": (lambda e: [*e.fresh, "lora.scope=value"], "lora.scope: expected a list"),
    "layer missing": (lambda e: [*e.fresh, "lora.layers=[7]"], "lora.layers: layer 7 does not exist"),
    "rank pattern layer": (lambda e: [*e.fresh, "lora.rank_pattern={9: 4}"], "lora.rank_pattern: layer 9"),
    "rank pattern 0": (lambda e: [*e.fresh, "lora.rank_pattern={1: 0}"], "ranks must be >= 1"),
    "over budget": (lambda e: [*e.fresh, "lora.budget=1000"], "over budget"),
    "init": (lambda e: [*e.fresh, "lora.init=svd"], "lora.init"),
    "bias": (lambda e: [*e.fresh, "lora.bias=all"], "lora.bias"),
    "lora+ ratio": (lambda e: [*e.fresh, "lora.plus_ratio=-1"], "lora.plus_ratio"),
    "head": (lambda e: [*e.fresh, "model.head=mlp"], "model.head: 'mlp'"),
    "pooling": (lambda e: [*e.fresh, "model.pooling=max"], "model.pooling: 'max'"),
    "head for distilbert": (lambda e: [*e.fresh, f"model.name={e.distilbert}", "model.head=out_proj"], "not available"),
    "lr 0": (lambda e: [*e.fresh, "train.lr=0"], "train.lr: must be > 0"),
    "lr text": (lambda e: [*e.fresh, "train.lr=fast"], "train.lr: expected float"),
    "layer decay 0": (lambda e: [*e.fresh, "train.layer_lr_decay=0"], "train.layer_lr_decay: must be in (0, 1]"),
    "layer decay 1.2": (lambda e: [*e.fresh, "train.layer_lr_decay=1.2"], "train.layer_lr_decay: must be in (0, 1]"),
    "steps 0": (lambda e: [*e.fresh, "train.steps=0"], "train.steps: must be >= 1"),
    "precision": (lambda e: [*e.fresh, "train.precision=fp8"], "train.precision"),
    "scheduler": (lambda e: [*e.fresh, "train.scheduler=step"], "train.scheduler"),
    "class weights": (lambda e: [*e.fresh, "train.class_weights=[1, 2]"], "train.class_weights: need 4"),
    "label smoothing": (lambda e: [*e.fresh, "train.label_smoothing=1"], "train.label_smoothing"),
    "warmup": (lambda e: [*e.fresh, "train.warmup_steps=-1"], "train.warmup_steps"),
    "val size 0": (lambda e: [*e.fresh, "data.val_size=0"], "data.val_size: must be >= 1"),
    "val size all": (lambda e: [*e.fresh, "data.val_size=100000"], "leaves no training rows"),
    "one class": (lambda e: [*e.fresh, "data.label_names=[a]"], "at least two classes"),
    "max length 1": (lambda e: [*e.fresh, "data.max_length=1"], "data.max_length"),
    "max length above the positions": (lambda e: [*e.fresh, "data.max_length=100"], "data.max_length 100 is more than"),
    "duplicate key in an override": (lambda e: [*e.fresh, "lora.rank_pattern={1: 2, 1: 3}"], "duplicate key '1'"),
    "class weights against the data's classes": (
        lambda e: [*e.fresh, "data.label_names=[]", "train.class_weights=[1, 2, 3]"],
        "train.class_weights: need 4",
    ),
    "name escapes": (lambda e: [*e.fresh, "output.name=../escape"], "output.name: '../escape' is a path"),
    "name with slash": (lambda e: [*e.fresh, "output.name=a/b"], "output.name: 'a/b' is a path"),
    # config files
    "section not a mapping": (
        lambda e: ["train", "--config", str(e.root / "model3.yaml")],
        "model: expected a mapping",
    ),
    "top level a list": (lambda e: ["train", "--config", str(e.root / "list.yaml")], "top level must be a mapping"),
    "bad yaml file": (lambda e: ["train", "--config", str(e.root / "bad.yaml")], "bad YAML"),
    "empty config": (lambda e: ["train", "--config", str(e.root / "empty.yaml")], "is empty"),
    "missing config": (lambda e: ["train", "--config", str(e.root / "nope.yaml")], "config file not found"),
    "repeated section": (
        lambda e: ["train", "--config", str(e.root / "duplicate.yaml")],
        "duplicate key 'model' at lines 1 and 5",
    ),
    "repeated key": (
        lambda e: ["train", "--config", str(e.root / "duplicate-key.yaml")],
        "duplicate key 'lr' at lines 2 and 4",
    ),
    # data files
    "missing data": (lambda e: with_data(e, "nope.csv"), "data file not found"),
    "unsupported data": (lambda e: with_data(e, "data.txt"), "unsupported file type"),
    "malformed csv": (lambda e: with_data(e, "malformed.csv"), "cannot parse"),
    "no text column": (lambda e: with_data(e, "body.csv"), "no 'text' column"),
    "no label column": (lambda e: with_data(e, "nolabel.csv"), "no 'label' column"),
    "label outside": (lambda e: with_data(e, "label9.csv"), "label 9, outside 0..3"),
    "label not a number": (lambda e: with_data(e, "labelabc.csv"), "label 'abc' in 'label'"),
    "empty text": (lambda e: with_data(e, "emptytext.csv"), "empty 'text'"),
    "header only": (lambda e: with_data(e, "header.csv"), "no rows"),
    "not utf-8": (lambda e: with_data(e, "latin1.csv"), "is not UTF-8 text"),
    "jsonl string label": (lambda e: with_data(e, "strings.jsonl"), "label 'foo'"),
    "fractional label": (lambda e: with_data(e, "fraction.jsonl"), "line 2 has label 0.5 in 'label', a fraction"),
    "malformed jsonl line": (lambda e: with_data(e, "badline.jsonl"), "line 2 is not valid JSON"),
    "labels mixing indices and names": (
        lambda e: [*with_data(e, "mixed.csv"), "data.label_names=[]"],
        "mixes class indices",
    ),
    # model folders
    "no weights": (lambda e: [*e.fresh, f"model.name={e.no_weights}"], "has no weights"),
    "no tokenizer": (lambda e: [*e.fresh, f"model.name={e.no_tokenizer}"], "has no tokenizer"),
    "no config.json": (lambda e: [*e.fresh, f"model.name={e.no_config}"], "has no config.json"),
    "model path missing": (lambda e: [*e.fresh, "model.name=./nope/model"], "does not exist"),
    # resume
    "resume nothing": (lambda e: [*e.fresh, "--resume"], "no run at"),
    "resume changed": (lambda e: [*e.train, "output.name=unfinished", "train.lr=1e-3", "--resume"], "train.lr (saved"),
    "resume finished": (lambda e: [*e.train, "--resume"], "has already finished"),
    "run exists": (lambda e: e.train, "exists: pass --resume"),
    "resume on changed data": (
        lambda e: [*e.changing_args, "output.name=unfinished", "--resume"],
        "changed since the run started (400 rows then, 600 now)",
    ),
    "eval on changed data": (lambda e: ["eval", str(e.changed_run)], "are no longer in"),
    # eval, predict, export, runs
    "eval not a run": (lambda e: ["eval", str(e.root / "out-dir")], "is not a run directory"),
    "eval no last": (lambda e: ["eval", str(e.half), "--which", "last"], "has no adapter in last/"),
    "eval data missing": (lambda e: ["eval", str(e.run), "--data", str(e.root / "nope.csv")], "data file not found"),
    "predict out is a dir": (
        lambda e: ["predict", str(e.run), "--input", str(e.root / "texts.csv"), "--out", str(e.root / "out-dir")],
        "is a directory",
    ),
    "predict no text column": (
        lambda e: ["predict", str(e.run), "--input", str(e.root / "bodies.csv"), "--out", str(e.root / "p.csv")],
        "no 'text' column",
    ),
    "pickle not allowed": (
        lambda e: ["predict", str(e.run), "--input", str(e.root / "dataset.pkl"), "--out", str(e.root / "p.csv")],
        "--allow-pickle",
    ),
    "corrupt pickle": (
        lambda e: [
            "predict",
            str(e.run),
            "--input",
            str(e.root / "corrupt.pkl"),
            "--out",
            str(e.root / "p.csv"),
            "--allow-pickle",
        ],  # fmt: skip
        "cannot unpickle",
    ),
    "export onto a file": (lambda e: ["export", str(e.run), str(e.root / "a-file")], "is a file"),
    "export into a full folder": (lambda e: ["export", str(e.run), str(e.root / "full-dir")], "is not empty"),
    "base model missing": (lambda e: ["eval", str(e.run), "--base-model", "./nope/model"], "does not exist"),
    "plan layers": (lambda e: ["budget", "--plan", "--model", str(e.model), "--layers", "8,x"], "--layers: '8,x'"),
    "runs sort column": (lambda e: ["runs", str(e.run), "--sort", "-bogus"], "unknown column 'bogus'"),
    "runs missing": (lambda e: ["runs", str(e.root / "nope")], "no such run directory"),
    "plot nothing": (lambda e: ["plot", str(e.root / "out-dir"), "--out", str(e.root / "figs")], "no finished runs"),
    "import-hf missing": (lambda e: ["import-hf", str(e.root / "nope"), "--out", str(e.root / "imp")], "no such file"),
    # sweeps and searches
    "sweep without base": (lambda e: ["sweep", str(e.root / "sweep-nobase.yaml"), "--runs", str(e.out)], "no 'base'"),
    "sweep unknown key": (lambda e: ["sweep", str(e.root / "sweep-key.yaml"), "--runs", str(e.out)], "unknown key"),
    "sweep unknown axis": (lambda e: ["sweep", str(e.root / "sweep-axis.yaml"), "--runs", str(e.out)], "unknown axis"),
    "sweep zip lengths": (
        lambda e: ["sweep", str(e.root / "sweep-zip.yaml"), "--runs", str(e.out)],
        "different lengths",
    ),
    "sweep alpha": (lambda e: ["sweep", str(e.root / "sweep-alpha.yaml"), "--runs", str(e.out)], "lora.alpha 'r*x'"),
    "storage password": (  # refused at once (port 1); the password never shown
        lambda e: ["sweep", str(e.root / "sweep-ok.yaml"), "--storage", "postgresql://me:s3cret@127.0.0.1:1/db"],
        "cannot open the Optuna storage postgresql://me:***@127.0.0.1:1/db",
    ),
    "search space": (
        lambda e: ["search", str(e.root / "search-space.yaml"), "--trials", "1", "--runs", str(e.out)],
        "needs low and high",
    ),
}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(env, case, capsys):
    argv, message = CASES[case][0](env), CASES[case][1]
    before = snapshot(env.root)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("loralab: error: "), err
    assert message in err[0], err[0]
    assert "s3cret" not in err[0]
    assert snapshot(env.root) == before


def test_readme_sort_spelling_and_offline_budget(env, capsys):
    assert main(["runs", str(env.run), "--sort", "-peak_accuracy"]) == 0  # as the README writes it
    assert "tiny" in capsys.readouterr().out
    # roberta-base's config.json ships with loralab: no hub, no network.
    assert main(["budget", str(SEED_CONFIG), "lora.r=24"]) == 1  # over the budget: exit 1, not an error
    out = capsys.readouterr().out
    assert "largest uniform lora.r within the budget: 22" in out and out.count("trainable parameters (budget") == 1


def test_predict_keeps_the_input_ids(env, tmp_path):
    source = write_csv(
        tmp_path / "kaggle.csv", [(f"row-{i}", t) for i, (_, t) in enumerate(synthetic_rows(5))], ("id", "text")
    )
    out = tmp_path / "submission.csv"
    assert main(["predict", str(env.run), "--input", str(source), "--out", str(out)]) == 0
    assert [line.split(",")[0] for line in out.read_text().splitlines()] == ["ID"] + [f"row-{i}" for i in range(5)]


def test_a_run_works_from_any_directory_and_when_moved(env, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(env.data, workdir / "train.csv")
    monkeypatch.chdir(workdir)
    args = [a for a in env.fresh if not a.startswith(("data.train=", "output.dir="))]
    assert main([*args, "data.train=train.csv", "output.dir=runs"]) == 0  # a relative path, as users type it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(workdir / "runs" / "tiny")]) == 0
    # Moved to a machine without the model folder: one line saying what to pass, then it works with it.
    moved = tmp_path / "moved"
    shutil.copytree(workdir / "runs" / "tiny", moved)
    saved = (moved / "config.yaml").read_text()
    (moved / "config.yaml").write_text(saved.replace(str(env.model), "/gone/model"))
    capsys.readouterr()
    assert main(["eval", str(moved)]) == 2
    assert "pass --base-model" in capsys.readouterr().err
    assert main(["eval", str(moved), "--base-model", str(env.model)]) == 0


def test_interrupted_adapter_writes_are_cleaned_on_resume(tmp_path):
    from loralab.runs.rundir import RunDir

    run = RunDir(tmp_path)
    (tmp_path / ".checkpoint.abc123").mkdir()  # killed while filling a new checkpoint
    (tmp_path / ".best.old").mkdir()  # killed between the two renames of best/
    (tmp_path / ".best.old" / "adapter_config.json").write_text("{}")
    run.clean_interrupted_writes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    assert (tmp_path / "best" / "adapter_config.json").exists()


def test_version_and_help_on_every_option(capsys):
    import argparse

    from loralab import __version__
    from loralab.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"loralab {__version__}"
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    listed = {choice.dest for choice in commands._choices_actions}
    assert listed == set(commands.choices)  # the top-level help lists every command
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"loralab {name} {action.option_strings or action.dest} has no help text"


def test_help_and_the_commands_that_read_no_model_load_no_torch(env, tmp_path):
    """`--help`, `runs` and `report` answer without waiting for torch and transformers to load (seconds)."""
    script = (
        "import sys\nfrom loralab.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as stop:\n    assert stop.code == 0\n"
        f"assert main(['runs', {str(env.run)!r}]) == 0\n"
        f"assert main(['report', {str(env.run)!r}, '--out', {str(tmp_path / 'report.html')!r}]) == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "train" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


def test_budget_over_the_budget_says_so_as_train_does(capsys):
    assert main(["budget", str(SEED_CONFIG), "lora.r=24"]) == 1
    out = capsys.readouterr().out
    assert "over budget: 1,036,036 trainable parameters > lora.budget 1,000,000" in out
    assert main(["budget", str(SEED_CONFIG)]) == 0 and "over budget" not in capsys.readouterr().out
    # The file as train takes it, `--config FILE`, with overrides before or after it.
    assert main(["budget", "--config", str(SEED_CONFIG), "lora.r=24"]) == 1
    assert "over budget: 1,036,036" in capsys.readouterr().out
    assert main(["budget", "lora.r=24", "-c", str(SEED_CONFIG)]) == 1
    assert "over budget: 1,036,036" in capsys.readouterr().out


def test_options_and_overrides_in_any_order(capsys):
    from loralab.cli import build_parser, parse_intermixed

    # The case: overrides after an option were refused as "unrecognized arguments".
    args = parse_intermixed(build_parser(), ["sweep", "f.yaml", "--runs", "d", "a.b=1", "--workers", "2", "c=3"])
    assert (args.file, args.runs, args.workers, args.overrides) == ("f.yaml", "d", 2, ["a.b=1", "c=3"])
    # Run for real: the override after the option decides the budget check (r=24 is over it: exit 1).
    assert main(["budget", str(SEED_CONFIG), "--labels", "4", "lora.r=24"]) == 1
    assert "over budget" in capsys.readouterr().out
    assert main(["budget", str(SEED_CONFIG), "--labels", "4", "lora.r=2"]) == 0
    # An unknown option is still argparse's one line and exit 2.
    with pytest.raises(SystemExit) as stop:
        main(["budget", str(SEED_CONFIG), "--bogus", "lora.r=2"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_every_command_that_writes_meets_an_unwritable_path_with_one_line(env, tmp_path, capsys):
    """A file where a folder must be, a special file system and a full device: one line naming the path,
    exit 2, nothing half-written anywhere."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    texts = env.root / "texts.csv"
    cases = [
        [*env.train, f"output.dir={blocker}/runs"],
        ["export", str(env.run), str(blocker / "exported")],
        ["predict", str(env.run), "--input", str(texts), "--out", str(blocker / "p.csv")],
        ["predict", str(env.run), "--input", str(texts), "--out", "/proc/loralab-predictions.csv"],
        ["plot", str(env.run), "--out", str(blocker / "figures")],
        ["report", str(env.run), "--out", str(blocker / "report.html")],
        ["report", str(env.run), "--out", "/proc/loralab-report.html"],
    ]  # fmt: skip
    if SEED_STUDY.is_dir():  # the study's Hugging Face results (../shared)
        cases.append(["import-hf", str(SEED_STUDY), "--out", str(blocker / "imported")])
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("loralab: error: "), (argv, err)
        assert "a-file" in err[0] or "/proc" in err[0], err[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == before and blocker.read_text() == "x"
    # A special file (a pipe here; a device is the same case) is not replaced by the output.
    import os
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["predict", str(env.run), "--input", str(texts), "--out", str(fifo)]) == 2
    assert "not a regular file" in capsys.readouterr().err and stat.S_ISFIFO(fifo.stat().st_mode)


def test_each_command_takes_its_flags_defaults_and_help_from_its_options_object():
    """One source: the parser is built from the typed options objects, so what a flag defaults to is what the
    code defaults to, and each field has its help."""
    import dataclasses

    from loralab.cli import build_parser, options_from
    from loralab.options import ExportOptions, InferenceOptions, PredictOptions, ServeOptions, SweepOptions

    parser = build_parser()
    cases = [
        (["serve", "r"], ServeOptions, ServeOptions(runs=["r"])),
        (["export", "r", "o"], ExportOptions, ExportOptions()),
        (["predict", "r", "--input", "i", "--out", "o"], PredictOptions, PredictOptions(input="i", out="o")),
        (["predict", "r", "--input", "i", "--out", "o"], InferenceOptions, InferenceOptions()),
        (["sweep", "f"], SweepOptions, SweepOptions(file="f")),
    ]
    for argv, cls, expected in cases:
        assert options_from(cls, parser.parse_args(argv)) == expected, argv
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls
    flags = ["export", "r", "o", "--no-check", "--format", "onnx", "--quantize", "int8", "--adapter-only"]
    export = options_from(ExportOptions, parser.parse_args(flags))
    assert (export.check, export.format, export.quantize, export.adapter_only) == (False, "onnx", "int8", True)
    serve = options_from(ServeOptions, parser.parse_args(["serve", "a", "b=c", "--max-queue", "9", "--threads", "2"]))
    assert (serve.runs, serve.max_queue, serve.threads) == (["a", "b=c"], 9, 2)
