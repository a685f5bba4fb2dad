import contextlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SEED_CONFIG, synthetic_rows
from transformers import AutoTokenizer

from loralab import config
from loralab.cli import main
from loralab.errors import LoralabError
from loralab.runs.rundir import RunDir
from loralab.training import train as train_module


def run_dir(overrides) -> RunDir:
    values = dict(o.split("=", 1) for o in overrides)
    return RunDir(Path(values["output.dir"]) / values["output.name"])


def mean(values):
    return sum(values) / len(values)


def test_loss_falls_and_accuracy_beats_chance(tiny_overrides):
    overrides = tiny_overrides + [
        "lora.scope=[query,value,ffn_in]",
        "lora.r=8",
        "train.steps=100",
        "train.eval_every=50",
        "train.batch_size=16",
        "train.log_every=5",
    ]
    summary = train_module.train(config.load(SEED_CONFIG, overrides))
    run = run_dir(overrides)
    train_losses = [row["loss"] for row in run.read_metrics() if row["split"] == "train"]
    # Windows of several logs, not single points: one noisy batch (or another GPU's arithmetic) must not decide it.
    assert mean(train_losses[-4:]) < 0.8 * mean(train_losses[:4])
    assert summary.peak_val_accuracy >= 0.5  # chance is 0.25 on four balanced classes
    # The saved adapter holds exactly the parameters that trained, as many as the budget counted.
    from safetensors.torch import load_file

    saved = load_file(str(run.best / "adapter_model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == summary.trainable["total"]


def test_run_directory_contents(tiny_overrides):
    summary = train_module.train(config.load(SEED_CONFIG, tiny_overrides))
    run = run_dir(tiny_overrides)
    assert config.from_dict(config.read_yaml(run.config)) == config.load(SEED_CONFIG, tiny_overrides)
    rows = run.read_metrics()
    assert [r["step"] for r in rows if r["split"] == "val"] == [4, 8, 12]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6, 8, 10, 12]
    for row in rows:
        assert {"step", "split", "loss", "elapsed_s"} <= set(row)
        assert {"accuracy", "f1_macro", "mcc"} <= set(row) if row["split"] == "val" else "lr" in row
    saved = json.loads(run.summary.read_text())
    assert saved["peak_val_accuracy"] == max(r["accuracy"] for r in rows if r["split"] == "val") == saved["peak"]
    assert saved["metric"] == "accuracy" and saved["peak_95ci"][0] < saved["peak"] < saved["peak_95ci"][1]
    assert saved["peak_step"] == summary.peak_step and saved["final"]["step"] == 12
    assert {"wall_time_s", "train_samples_per_s", "versions", "git_commit", "trainable"} <= set(saved)
    assert run.read_summary() == summary
    best, last = run.read_predictions("best"), run.read_predictions("last")
    assert best.step == saved["peak_step"] and len(best.predictions) == 64 and last.step == 12
    for folder in (run.best, run.last):
        assert (folder / "adapter_model.safetensors").exists() and (folder / "adapter_config.json").exists()
        # The tiny roberta checkpoint has no classifier: with head full, every fresh weight trains.
        assert not (folder / "frozen_weights.safetensors").exists()


@pytest.mark.parametrize("head", ["full", "out_proj", "lora", "finetune=full"])
def test_resume_after_kill_ends_like_an_uninterrupted_run(tiny_overrides, monkeypatch, head):
    tiny_overrides = tiny_overrides + (
        [f"model.head={head}"] if "=" not in head else ["model.finetune=full", "train.lr=1e-3"]
    )
    whole = train_module.train(config.load(SEED_CONFIG, tiny_overrides))
    whole_rows = run_dir(tiny_overrides).read_metrics()

    overrides = [o if not o.startswith("output.name=") else "output.name=killed" for o in tiny_overrides]
    real_save = RunDir.save_checkpoint

    def save_then_die(run, model, frozen, optimizer, scheduler, state):
        real_save(run, model, frozen, optimizer, scheduler, state)
        if state.step == 8:
            raise KeyboardInterrupt  # killed right after the step-8 checkpoint

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config.load(SEED_CONFIG, overrides))
    monkeypatch.setattr(RunDir, "save_checkpoint", real_save)
    # A different head draw in the resumed process must not matter: the checkpoint holds the frozen weights.
    monkeypatch.setattr(train_module.torch, "manual_seed", lambda seed: torch.random.manual_seed(seed + 1))
    assert not run_dir(overrides).summary.exists()
    with pytest.raises(LoralabError, match="exists: pass --resume"):
        train_module.train(config.load(SEED_CONFIG, overrides))
    resumed = train_module.train(config.load(SEED_CONFIG, overrides), resume=True)

    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed_s", "samples_per_s")} for r in rows]  # noqa: E731
    assert strip(run_dir(overrides).read_metrics()) == strip(whole_rows)
    assert resumed.final == whole.final
    assert resumed.peak_val_accuracy == whole.peak_val_accuracy


def test_early_stopping(tiny_overrides):
    overrides = tiny_overrides + ["train.lr=1e-9", "train.early_stopping_patience=1", "train.steps=40"]
    summary = train_module.train(config.load(SEED_CONFIG, overrides))
    assert summary.stopped_early and summary.steps_done < 40
    assert run_dir(overrides).read_predictions("last").step == summary.steps_done


def bad_inputs(tmp_path, model_dirs):
    empty_model = tmp_path / "no-weights"
    empty_model.mkdir()
    shutil.copy(model_dirs["roberta"] / "config.json", empty_model / "config.json")
    return {
        "missing file": (["data.train=" + str(tmp_path / "nope.csv")], "data file not found"),
        "malformed csv": (
            ["data.train=" + str(write_bad(tmp_path / "m.csv", 'label,text\n0,"open\n'))],
            "cannot parse",
        ),
        "no text column": (
            ["data.train=" + str(write_bad(tmp_path / "c.csv", "label,body\n0,x\n"))],
            "no 'text' column",
        ),
        "label outside": (["data.train=" + str(write_bad(tmp_path / "l.csv", "label,text\n9,x\n"))], "label 9"),
        "empty text": (["data.train=" + str(write_bad(tmp_path / "e.csv", 'label,text\n0,""\n'))], "empty 'text'"),
        "no weights": ([f"model.name={empty_model}"], "has no weights"),
        "unknown scope": (["lora.scope=[valu]"], "unknown scope name 'valu'"),
        "over budget": (["lora.budget=1000"], "over budget"),
        "unknown key": (["train.step=3"], "unknown config key 'train.step'"),
    }


def write_bad(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "malformed csv",
        "no text column",
        "label outside",
        "empty text",
        "no weights",
        "unknown scope",
        "over budget",
        "unknown key",
    ],
)
def test_bad_input_one_line_nonzero_exit_no_run_dir(case, tiny_overrides, tmp_path, model_dirs, capsys):
    extra, message = bad_inputs(tmp_path, model_dirs)[case]
    code = main(["train", "--config", str(SEED_CONFIG), *tiny_overrides, *extra])
    err = capsys.readouterr().err
    assert code == 2
    first = [line for line in err.splitlines() if line.startswith("loralab: error:")]
    assert len(first) == 1 and message in first[0]
    assert not (tmp_path / "runs").exists()


def test_bad_yaml_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "bad YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "variant",
    [
        ["lora.use_rslora=true"],
        ["lora.use_dora=true", "train.lr=3e-2"],
        ["lora.plus_ratio=16", "train.lr=1e-3"],
        ["lora.init=pissa"],
        ["lora.bias=lora_only"],
        ["train.label_smoothing=0.1"],
        ["train.class_weights=[1, 2, 1, 1]"],
        ["train.grad_accum=2", "train.batch_size=8"],
        ["train.precision=bf16"],
        ["train.scheduler=cosine"],
        ["train.weight_decay=0.01"],
        ["train.layer_lr_decay=0.8"],
    ],
    ids=lambda v: v[0],
)
def test_variants_train(tiny_overrides, variant, tmp_path):
    """Each variant learns, and changes what trains: the same run without its setting (the settings after
    the first are shared by both) logs other losses. A setting silently ignored would log the same ones."""
    common = tiny_overrides + ["lora.scope=[query,value,ffn_in]", "lora.r=8", "train.steps=100", "train.eval_every=100"]

    def losses(extra: list[str], name: str) -> list[float]:
        overrides = [*common, *extra, f"output.name={name}"]
        train_module.train(config.load(SEED_CONFIG, overrides))
        return [row["loss"] for row in run_dir(overrides).read_metrics() if row["split"] == "train"]

    with_variant = losses(variant, "variant")
    assert mean(with_variant[-3:]) < mean(with_variant[:3])
    assert with_variant != losses(variant[1:], "without")


def test_lora_plus_gives_b_matrices_a_larger_learning_rate(model_dirs):
    from loralab.budget.count import ModelShapes, breakdown_for, load_model_config
    from loralab.modeling.model import build_model, optimizer_groups

    cfg = config.from_dict(
        {"model": {"name": str(model_dirs["roberta"])}, "lora": {"plus_ratio": 16.0}, "train": {"lr": 1e-4}}
    )
    model_config = load_model_config(cfg)
    breakdown, plan = breakdown_for(cfg, ModelShapes.of(model_config))
    groups = optimizer_groups(build_model(cfg, ModelShapes.of(model_config), plan, breakdown)[0], cfg)
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1.6e-3])
    assert sum(p.numel() for g in groups for p in g["params"]) == breakdown.total


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_layer_lr_decay_lowers_the_rate_layer_by_layer(model_dirs, finetune):
    from loralab.budget.count import ModelShapes, breakdown_for, load_model_config
    from loralab.modeling.model import build_model, optimizer_groups

    cfg = config.from_dict(
        {
            "model": {"name": str(model_dirs["roberta"]), "finetune": finetune},
            "lora": {"plus_ratio": 4.0 if finetune == "lora" else 0.0},
            "train": {"lr": 1e-3, "layer_lr_decay": 0.5},
        }
    )
    model_config = load_model_config(cfg)
    breakdown, plan = breakdown_for(cfg, ModelShapes.of(model_config))
    model = build_model(cfg, ModelShapes.of(model_config), plan, breakdown)[0]
    rate = {id(p): g["lr"] for g in optimizer_groups(model, cfg) for p in g["params"]}
    named = {name: rate[id(p)] for name, p in model.named_parameters() if p.requires_grad}
    assert len(named) == len(rate)  # every trainable tensor in exactly one group
    top = model_config.num_hidden_layers - 1

    def lr_of(fragment: str) -> float:
        (found,) = {lr for name, lr in named.items() if fragment in name}
        return found

    assert lr_of("out_proj") == pytest.approx(1e-3)  # the head: the full rate
    for layer in range(top + 1):
        scale = 0.5 ** (top - layer)
        if finetune == "lora":
            assert lr_of(f"layer.{layer}.attention.self.value.lora_A") == pytest.approx(1e-3 * scale)
            assert lr_of(f"layer.{layer}.attention.self.value.lora_B") == pytest.approx(4e-3 * scale)  # LoRA+ too
        else:
            assert lr_of(f"layer.{layer}.output.dense.weight") == pytest.approx(1e-3 * scale)
    if finetune == "full":
        assert lr_of("embeddings.word_embeddings") == pytest.approx(1e-3 * 0.5 ** (top + 1))


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_processes(overrides: list[str], *extra: str, wait: bool = True):
    """`torchrun --nproc_per_node 2 -m loralab.cli train` on CPU (gloo), as the README says."""
    import os
    import subprocess
    import sys

    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    command = [*launcher, "-m", "loralab.cli", "train", "--config", str(SEED_CONFIG), *overrides, *extra]
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_make_one_run_like_one_process_with_the_same_global_batch(tiny_overrides, tmp_path):
    from transformers import AutoConfig, AutoModel

    # Without dropout the two are the same computation: each process's gradient is the mean over its
    # micro-batch, DDP averages the two, as accumulation over the same two micro-batches does.
    model_dir = tmp_path / "no-dropout"
    source = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("model.name="))
    model_config = AutoConfig.from_pretrained(source, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModel.from_pretrained(source, config=model_config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(model_dir)
    common = tiny_overrides + [f"model.name={model_dir}", "lora.dropout=0", "train.steps=16", "train.eval_every=8",
                               "train.log_every=4", "train.batch_size=8"]  # fmt: skip
    # One process of 8 rows x 2 accumulated takes micro-batches 2s and 2s+1 of the stream: what two processes take.
    single = train_module.train(config.load(SEED_CONFIG, common + ["train.grad_accum=2", "output.name=single"]))
    two = common + ["output.name=two"]
    out = launch_two_processes(two)
    assert out.returncode == 0, out.stderr[:3000]
    assert out.stdout.count("trainable parameters (budget") == 1  # one process speaks
    run = run_dir(two)
    summary = run.read_summary()
    assert summary.trainable == single.trainable and summary.steps_done == 16
    rows = run.read_metrics()
    assert [r["step"] for r in rows if r["split"] == "val"] == [8, 16]  # written once, not once per process
    assert [r["step"] for r in rows if r["split"] == "train"] == [4, 8, 12, 16]
    # The whole validation split, each row once.
    assert summary.val_rows == 64 and len(run.read_predictions("best").predictions) == 64
    single_rows = run_dir(common + ["output.name=single"]).read_metrics()
    for mine, theirs in zip(rows, single_rows):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-3), (mine, theirs)
    assert abs(summary.peak_val_accuracy - single.peak_val_accuracy) <= 1 / 64  # a near-tie row may flip


def descendants(pid: int) -> list[int]:
    """Child processes, grandchildren and so on (torchrun's workers are not in its process group)."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def test_two_processes_resume_after_kill(tiny_overrides):
    import os
    import signal
    import time

    overrides = tiny_overrides + ["train.steps=200", "train.eval_every=20", "train.log_every=10", "output.name=dp"]
    run = run_dir(overrides)
    launched = launch_two_processes(overrides, wait=False)
    deadline = time.time() + 300
    while not (run.checkpoint / "state.pt").exists() and launched.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    for pid in [launched.pid, *descendants(launched.pid)]:  # every process of the launch, as a crash would
        with contextlib.suppress(ProcessLookupError):  # one may have ended between the listing and the kill
            os.kill(pid, signal.SIGKILL)
    launched.wait()
    assert not run.summary.exists(), "the run finished before it could be killed"
    resumed = launch_two_processes(overrides, "--resume")
    assert resumed.returncode == 0, resumed.stderr[:3000]
    assert re.search(r"resumed .* at step (20|40|60|80)", resumed.stdout + resumed.stderr)
    rows = run.read_metrics()
    assert [r["step"] for r in rows if r["split"] == "val"] == list(range(20, 201, 20))
    assert run.read_summary().steps_done == 200


def test_bf16_casts_frozen_linears_once_with_the_same_arithmetic(tiny_overrides, monkeypatch):
    overrides = tiny_overrides + ["train.precision=bf16", "model.head=out_proj", "lora.scope=[query,value]"]
    cast = train_module.cast_frozen_linears
    seen = {}

    def cast_and_look(model, precision):
        cast(model, precision)
        seen["dtypes"] = {(p.requires_grad, p.dtype) for p in model.parameters()}

    monkeypatch.setattr(train_module, "cast_frozen_linears", cast_and_look)
    train_module.train(config.load(SEED_CONFIG, overrides + ["output.name=cast"]))
    # Frozen Linear weights in bf16, everything that trains in fp32 (the optimizer's copy).
    assert (False, torch.bfloat16) in seen["dtypes"] and (True, torch.float32) in seen["dtypes"]
    assert (True, torch.bfloat16) not in seen["dtypes"]
    monkeypatch.setattr(train_module, "cast_frozen_linears", lambda model, precision: None)
    train_module.train(config.load(SEED_CONFIG, overrides + ["output.name=autocast"]))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed_s", "samples_per_s")} for r in rows]  # noqa: E731
    cast_rows = strip(run_dir(overrides + ["output.name=cast"]).read_metrics())
    assert cast_rows == strip(run_dir(overrides + ["output.name=autocast"]).read_metrics())  # bit for bit


def test_a_second_writer_is_refused_naming_the_first_and_a_kill_frees_the_run(tiny_overrides, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    overrides = tiny_overrides + ["train.steps=100000", "train.eval_every=5", "output.name=owned"]
    run = run_dir(overrides)
    command = [sys.executable, "-m", "loralab.cli", "train", "--config", str(SEED_CONFIG), *overrides]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run.checkpoint / "state.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first writer ended before the second came"
        rows_before = len(run.read_metrics())
        assert main(["train", "--config", str(SEED_CONFIG), *overrides, "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is being trained by process {first.pid} " in err[-1], err
        assert first.poll() is None and len(run.read_metrics()) >= rows_before  # the first goes on, untouched
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # The kernel released the lock with the process: the run can be taken over at once.
    with run.lock():
        pass


def test_the_label_set_comes_from_the_data_and_misfits_are_said(tiny_overrides, tmp_path, capsys):
    from conftest import write_csv

    binary = write_csv(tmp_path / "binary.csv", [(i % 2, text) for i, (_, text) in enumerate(synthetic_rows(200))])
    base = [*tiny_overrides, f"data.train={binary}"]
    unnamed = train_module.train(config.load(SEED_CONFIG, [*base, "data.label_names=[]", "output.name=unnamed"]))
    assert run_dir([*base, "output.name=unnamed"]).read_config().data.label_names == ["0", "1"]
    assert "warning" not in capsys.readouterr().err
    named = train_module.train(config.load(SEED_CONFIG, [*base, "output.name=ag-names"]))  # the seed's 4 names
    assert "has no row of Business, Sci/Tech" in capsys.readouterr().err
    # Two outputs instead of four: the head's last layer is smaller by 2 x (hidden + 1) = 66 parameters.
    assert named.trainable["total"] - unnamed.trainable["total"] == 66


def test_progress_off_a_terminal_is_a_line_per_log_and_the_checkpoint_goes(tiny_overrides, capsys):
    overrides = tiny_overrides + ["output.name=logged"]  # 12 steps, a log every 2
    train_module.train(config.load(SEED_CONFIG, overrides))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == [f"{s}/12" for s in range(2, 13, 2)]
    assert "\r" not in err and all(" eta " in line and " val_accuracy " in line for line in lines)
    run = run_dir(overrides)
    assert run.summary.exists() and not run.checkpoint.exists()  # finished: nothing left to resume
    kept = tiny_overrides + ["output.name=kept", "train.keep_checkpoint=true"]
    train_module.train(config.load(SEED_CONFIG, kept))
    assert (run_dir(kept).checkpoint / "state.pt").exists()


def test_run_files_follow_the_umask(tiny_overrides):
    import os
    import stat

    old = os.umask(0o002)  # a group-shared setup
    try:
        overrides = tiny_overrides + ["output.name=shared"]
        train_module.train(config.load(SEED_CONFIG, overrides))
    finally:
        os.umask(old)
    run = run_dir(overrides)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(run.best) == 0o775 and mode(run.config) == 0o664 and mode(run.summary) == 0o664
    assert mode(run.best / "adapter_model.safetensors") == 0o664


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_gradient_checkpointing_recomputes_the_blocks_and_changes_no_number(tiny_overrides, monkeypatch, finetune):
    from loralab.modeling import model as model_module

    calls = []
    real = model_module.checkpoint_layers

    def count_block_runs(model):
        real(model)
        # A module inside block 0: the recomputation calls the block's forward, not its hooks.
        next(model_module.encoder_layers(model)[0].children()).register_forward_hook(lambda *_: calls.append(1))

    monkeypatch.setattr(train_module, "checkpoint_layers", count_block_runs)
    base = tiny_overrides + [f"model.finetune={finetune}", "train.eval_every=100"]  # one evaluation, at step 12
    rows = {}
    for checkpointing in ("false", "true"):
        overrides = base + [f"train.gradient_checkpointing={checkpointing}", f"output.name=gc-{checkpointing}"]
        train_module.train(config.load(SEED_CONFIG, overrides))
        rows[checkpointing] = [
            {k: v for k, v in r.items() if k not in ("elapsed_s", "samples_per_s")}
            for r in run_dir(overrides).read_metrics()
        ]
    assert rows["true"] == rows["false"]  # dropout included: the RNG is restored for the recomputation
    # Block 0 ran twice per step (forward, then again in backward), and once per evaluation batch.
    assert len(calls) == 2 * 12 + 1


@pytest.mark.parametrize("flags, used", [({"avx2", "fma"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16")])
def test_precision_auto_trains_in_what_the_cpu_computes_natively_and_says_so(
    tiny_overrides, monkeypatch, capsys, flags, used
):
    from loralab import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    casts = []
    real_cast = train_module.cast_frozen_linears
    monkeypatch.setattr(train_module, "cast_frozen_linears", lambda m, p: casts.append(p) or real_cast(m, p))
    overrides = [*tiny_overrides, "train.precision=auto", "train.steps=2", "train.eval_every=2"]
    assert main(["train", "--config", str(SEED_CONFIG), *overrides]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"precision {used} (auto: ")  # the first line: the choice and its reason
    summary = json.loads(run_dir(overrides).summary.read_text())
    assert summary["precision"]["asked"] == "auto" and summary["precision"]["used"] == used
    assert casts == [used]  # what really ran: the frozen weights cast to bf16, or left in fp32
    assert summary["machine"]["torch"] == torch.__version__ and summary["machine"]["cpu"]
