import json

import pytest
import yaml
from conftest import SEED_CONFIG, STUDY_CONFIG

from loralab import config
from loralab.errors import LoralabError
from loralab.runs.rundir import RunDir


def test_seed_config_is_the_study_run():
    cfg = config.load(SEED_CONFIG)
    assert (cfg.model.name, cfg.model.head) == ("roberta-base", "full")
    assert (cfg.lora.scope, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (["value"], 22, 44.0, 0.1)
    assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.steps, cfg.train.batch_size) == (5e-5, 100, 1200, 16)
    assert (cfg.train.eval_every, cfg.train.eval_batch_size) == (100, 64)
    assert (cfg.data.train, cfg.data.val_size, cfg.data.split_seed) == ("fancyzhx/ag_news", 640, 42)
    assert cfg.output.name == "seed"


def test_overrides_are_typed():
    cfg = config.load(SEED_CONFIG, ["lora.r=8", "train.lr=2e-4", "lora.layers=[10, 11]", "lora.rank_pattern={11: 16}"])
    assert cfg.lora.r == 8 and cfg.train.lr == 2e-4
    assert cfg.lora.layers == [10, 11] and cfg.lora.rank_pattern == {11: 16}


def test_yaml_float_without_dot_is_read_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 5e-5\n")
    assert config.load(path).train.lr == 5e-5
    assert config.load(path).output.name == "c"


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rank=8", "unknown config key 'lora.rank'"),
        ("optim.lr=1", "unknown config key 'optim'"),
        ("lora.r=eight", "lora.r: expected int"),
        ("lora.r=2.5", "lora.r: expected int"),
        ("lora.scope=value", "lora.scope: expected a list"),
        ("train.precision=fp8", "train.precision: 'fp8' is not one of"),
        ("model.head=mlp", "model.head: 'mlp' is not one of"),
        ("lora.dropout=1.5", "lora.dropout"),
        ("lr=1", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(LoralabError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config.load(SEED_CONFIG, [override])


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lora:\n  r: [1, 2\n")
    with pytest.raises(LoralabError, match="bad YAML .* line"):
        config.load(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(LoralabError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = config.load(SEED_CONFIG, ["lora.rank_pattern={3: 5}", "lora.layers=[3]"])
    RunDir(tmp_path).write_config(cfg)
    again = config.from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


@pytest.mark.parametrize("name", ["seed.yaml", "best.yaml", "best-offline.yaml"])
def test_shipped_configs_fit_roberta_base_exactly_as_the_study(name):
    from transformers import RobertaConfig

    from loralab.budget.count import ModelShapes, breakdown_for

    cfg = config.load(STUDY_CONFIG.parent / name)
    breakdown, _ = breakdown_for(cfg, ModelShapes.of(RobertaConfig(num_labels=len(cfg.data.label_names))))
    assert breakdown.total == 999_172
    assert (cfg.train.steps, cfg.train.batch_size, cfg.data.val_size, cfg.data.split_seed) == (1200, 16, 640, 42)


def test_shipped_sweep_files_expand(tmp_path):
    from loralab.sweeps.sweep import read_sweep

    paths = sorted((STUDY_CONFIG.parent / "sweeps").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        sweep = read_sweep(path, str(tmp_path))
        spec = yaml.safe_load(path.read_text())
        # A sweep file expands to trials, a search file to a space: never neither.
        assert bool(sweep.trials) == ("groups" in spec) and bool(sweep.space) == ("space" in spec), path
        # Every trial is a run of its own: no two write one run directory, and each one's settings are its own.
        places = [(trial.group, trial.label) for trial in sweep.trials]
        assert len(set(places)) == len(places), path
        settings = [json.dumps(trial.values, sort_keys=True) for trial in sweep.trials]
        assert len(set(settings)) == len(settings), path
