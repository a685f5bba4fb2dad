import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, SEED_CONFIG
from transformers import AutoModelForSequenceClassification, RobertaConfig

from loralab import config
from loralab.budget.count import (
    ModelShapes,
    breakdown_for,
    check_budget,
    largest_fitting_rank,
    load_model_config,
    with_rank,
)
from loralab.errors import LoralabError
from loralab.methods import method_of
from loralab.modeling.model import build_model, trainable_params

ROBERTA_BASE_CONFIG = RobertaConfig(num_labels=4)
ROBERTA_BASE = ModelShapes.of(ROBERTA_BASE_CONFIG)


@pytest.mark.parametrize(
    "scope, r, expected",
    [
        (["value"], 22, 999_172),
        (["value"], 11, 796_420),
        (["value"], 6, 704_260),
        (["query", "value"], 11, 999_172),
        (["query", "key", "value"], 7, 980_740),
        (["query", "value"], 8, 888_580),
    ],
)
def test_roberta_base_counts_match_the_study(scope, r, expected):
    cfg = config.from_dict({"lora": {"scope": scope, "r": r}})
    breakdown, _ = breakdown_for(cfg, ROBERTA_BASE)
    assert breakdown.total == expected
    assert dict(breakdown.rows)["head (full: classifier.dense + classifier.out_proj)"] == 593_668


def test_full_size_roberta_base_built_with_peft_trains_999172():
    cfg = config.from_dict({})
    breakdown, plan = breakdown_for(cfg, ROBERTA_BASE)
    torch.manual_seed(0)
    model = method_of(cfg).attach(AutoModelForSequenceClassification.from_config(ROBERTA_BASE_CONFIG), cfg, plan)
    assert trainable_params(model) == breakdown.total == 999_172


def test_largest_fitting_rank_is_exact():
    cfg = config.from_dict({"lora": {"r": 30}})
    rank = largest_fitting_rank(cfg, ROBERTA_BASE)
    assert rank == 22
    over = config.from_dict({"lora": {"r": rank + 1}})
    assert breakdown_for(over, ROBERTA_BASE)[0].total > 1_000_000


def test_over_budget_is_refused_with_the_largest_rank():
    cfg = config.from_dict({"lora": {"r": 23}})
    breakdown, _ = breakdown_for(cfg, ROBERTA_BASE)
    with pytest.raises(LoralabError, match=r"over budget: 1,017,604 .* largest lora.r that fits is 22"):
        check_budget(cfg, breakdown, ROBERTA_BASE)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["full", "out_proj", "lora"])
@pytest.mark.parametrize("scope", [["value"], ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]])
def test_count_equals_built_model(model_dirs, family, head, scope):
    cfg = config.from_dict({"model": {"name": str(model_dirs[family]), "head": head}, "lora": {"scope": scope, "r": 3}})
    model_config = load_model_config(cfg)
    if family == "distilbert" and head != "full":
        with pytest.raises(LoralabError, match="not available for distilbert"):
            breakdown_for(cfg, ModelShapes.of(model_config))
        return
    breakdown, plan = breakdown_for(cfg, ModelShapes.of(model_config))
    model = build_model(cfg, ModelShapes.of(model_config), plan, breakdown)[0]
    assert trainable_params(model) == breakdown.total


def test_rank_pattern_and_layers_count(model_dirs):
    cfg = config.from_dict(
        {
            "model": {"name": str(model_dirs["roberta"])},
            "lora": {"scope": ["query", "value"], "r": 2, "layers": [1], "rank_pattern": {1: 5}},
        }
    )
    model_config = load_model_config(cfg)
    breakdown, plan = breakdown_for(cfg, ModelShapes.of(model_config))
    assert sorted(plan.lora_ranks.values()) == [5, 5]
    head = 32 * 32 + 32 + 32 * 4 + 4
    assert breakdown.total == 2 * 5 * (32 + 32) + head
    assert trainable_params(build_model(cfg, ModelShapes.of(model_config), plan, breakdown)[0]) == breakdown.total


def test_budget_command_needs_only_config_json(tmp_path, model_dirs):
    folder = tmp_path / "just-config"
    folder.mkdir()
    ROBERTA_BASE_CONFIG.save_pretrained(folder)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    out = subprocess.run(
        [sys.executable, "-m", "loralab.cli", "budget", str(SEED_CONFIG), f"model.name={folder}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"^  total +999,172$", out.stdout, re.M), out.stdout
    assert re.search(r"^  headroom +828$", out.stdout, re.M), out.stdout


def meta_and_arithmetic(folder, labels: int = 4):
    """The module shapes of the model in `folder` built on the meta device (as training counts) and computed by
    the planner's arithmetic from its config.json alone."""
    import json

    from transformers import AutoConfig

    from loralab.budget.arithmetic import module_shapes as by_arithmetic

    built = ModelShapes.of(AutoConfig.from_pretrained(folder, num_labels=labels)).modules
    return built, by_arithmetic(json.loads((folder / "config.json").read_text()), labels)


def other_layouts(root):
    """Configs beside the tests' tiny ones: roberta-base as shipped, BERT without token types, DeBERTa-v3's
    relative positions (shared keys, buckets, a LayerNorm on them) and DistilBERT's sinusoidal positions."""
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig

    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    configs = {
        "bert-one-type": BertConfig(**shape, type_vocab_size=1),
        "deberta-v3": DebertaV2Config(
            **shape,
            relative_attention=True,
            share_att_key=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            type_vocab_size=0,
        ),  # fmt: skip
        "distilbert-sinusoidal": DistilBertConfig(
            dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=99, sinusoidal_pos_embds=True
        ),  # fmt: skip
    }
    folders = {"roberta-base": Path(config.__file__).parent / "hub_configs" / "roberta-base"}
    for name, model_config in configs.items():
        model_config.save_pretrained(root / name)
        folders[name] = root / name
    return folders


def test_the_planners_arithmetic_gives_the_built_models_shapes_on_every_family(model_dirs, tmp_path):
    folders = dict(model_dirs) | other_layouts(tmp_path)
    for name, folder in folders.items():
        for labels in (1, 4):
            built, computed = meta_and_arithmetic(folder, labels)
            assert computed is not None, name
            assert computed[""] == built[""], name  # every weight: a full fine-tuning's count
            linears = {key: shape for key, shape in built.items() if shape.in_features is not None}
            assert {key: shape for key, shape in computed.items() if key} == linears, name


def test_the_planner_builds_the_model_where_its_arithmetic_does_not_know_the_config(tmp_path):
    from transformers import DebertaV2Config

    folder = tmp_path / "deberta-unshared"
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    DebertaV2Config(**shape, relative_attention=True, share_att_key=False, pos_att_type=["c2p"]).save_pretrained(folder)
    built, computed = meta_and_arithmetic(folder)
    assert computed is None  # its extra position projections are not in the arithmetic
    cfg = config.from_dict({"model": {"name": str(folder)}, "lora": {"scope": ["value"], "r": 4}})
    from loralab.budget.count import planning_shapes

    assert planning_shapes(cfg).modules == ModelShapes.of(load_model_config(cfg)).modules  # the meta path, exact


def test_the_budget_planner_loads_neither_torch_nor_transformers():
    model = Path(config.__file__).parents[2] / "configs" / "models" / "roberta-base"
    script = (
        f"import sys\nfrom loralab.cli import main\nassert main(['budget', '--plan', '--model', {str(model)!r}]) == 0\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "value" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"


VARIANTS = [
    {"lora": {"use_rslora": True}},
    {"lora": {"use_dora": True}},
    {"lora": {"bias": "lora_only"}},
    {"lora": {"init": "gaussian"}},
    {"lora": {"init": "pissa"}},
    {"lora": {"init": "olora"}},
    {"lora": {"plus_ratio": 16.0}},
    {"lora": {"use_dora": True, "bias": "lora_only"}, "model": {"head": "lora"}},
]


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for s in v.values() for k, x in s.items())
)
def test_variant_counts_equal_built_model(model_dirs, variant):
    tree = {
        "model": {"name": str(model_dirs["roberta"]), **variant.get("model", {})},
        "lora": {"scope": ["query", "value", "ffn_in"], "r": 3, **variant["lora"]},
    }
    cfg = config.from_dict(tree)
    model_config = load_model_config(cfg)
    breakdown, plan = breakdown_for(cfg, ModelShapes.of(model_config))
    assert trainable_params(build_model(cfg, ModelShapes.of(model_config), plan, breakdown)[0]) == breakdown.total


def test_dora_and_bias_add_one_parameter_per_output():
    plain = breakdown_for(config.from_dict({}), ROBERTA_BASE)[0].total
    assert breakdown_for(config.from_dict({"lora": {"use_dora": True}}), ROBERTA_BASE)[0].total == plain + 12 * 768
    assert breakdown_for(config.from_dict({"lora": {"bias": "lora_only"}}), ROBERTA_BASE)[0].total == plain + 12 * 768


def test_plan_table_equals_built_models(model_dirs):
    from loralab.budget.count import plan_table

    cfg = config.from_dict({"model": {"name": str(model_dirs["roberta"])}, "lora": {"budget": 6000}})
    model_config = load_model_config(cfg)
    rows = plan_table(cfg, ModelShapes.of(model_config))
    assert len(rows) == 63 * 3
    for row in rows:
        probe = config.from_dict(
            {
                "model": {"name": str(model_dirs["roberta"]), "head": row["head"]},
                "lora": {"scope": row["scope"].split(","), "r": max(row["r"], 1), "budget": 6000},
            }
        )
        breakdown, plan = breakdown_for(probe, ModelShapes.of(model_config))
        built = trainable_params(build_model(probe, ModelShapes.of(model_config), plan, breakdown)[0])
        if row["r"] == 0:
            assert built > 6000
            continue
        assert built == row["total"] <= 6000
        bigger = config.from_dict({"model": probe.model.__dict__, "lora": probe.lora.__dict__ | {"r": row["r"] + 1}})
        assert breakdown_for(bigger, ModelShapes.of(model_config))[0].total > 6000


def test_plan_upper_layers_only():
    from loralab.budget.count import plan_table

    rows = plan_table(config.from_dict({}), ROBERTA_BASE, layers=[8, 9, 10, 11])
    value_full = next(r for r in rows if r["scope"] == "value" and r["head"] == "full")
    assert value_full["r"] == 66 and value_full["total"] == 4 * 66 * 1536 + 593_668


@pytest.mark.parametrize("method", ["lora", "vera", "fourierft", "ia3", "bitfit", "adalora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_counts_exactly_on_every_family(model_dirs, family, method):
    """The count from config.json alone equals what PEFT builds, for each method on each supported family, with
    the feed-forward layers (IA3 rescales ffn_out's input) and a trained head. AdaLoRA, which moves rank between
    layers of one shape, is built at its starting rank (tests/methods/test_adalora.py checks its final count)."""
    scope = ["query", "value"] if method == "adalora" else ["query", "value", "ffn_out"]
    tree = {
        "model": {"name": str(model_dirs[family])},
        "lora": {"method": method, "scope": scope, "r": 3, **({"n_frequency": 7} if method == "fourierft" else {})},
    }
    cfg = config.from_dict(tree)
    model_config = load_model_config(cfg)
    breakdown, plan = breakdown_for(cfg, ModelShapes.of(model_config))
    model = build_model(cfg, ModelShapes.of(model_config), plan, breakdown)[0]
    size = method_of(cfg).start_size(cfg)
    start = breakdown_for(with_rank(cfg, size), ModelShapes.of(model_config))[0] if size else breakdown
    assert trainable_params(model) == start.total
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    if method == "bitfit":  # the adapted layers' biases and the head: nothing else, nothing added
        adapted = {f"model.{name}.bias" for name in plan.lora_ranks}
        head = [n for n in trained if any(n.startswith(f"model.{module}.") for module in plan.trained_whole)]
        assert head and set(trained) - set(head) == adapted
    else:
        assert type(model.peft_config["default"]).__name__.lower().startswith(method[:4])


def test_methods_table_gives_each_methods_largest_size_and_counts_it_exactly(model_dirs):
    from loralab.budget.count import methods_table

    cfg = config.from_dict({"model": {"name": str(model_dirs["roberta"])},
                            "lora": {"scope": ["query", "value"], "budget": 3000}})  # fmt: skip
    model = ModelShapes.of(load_model_config(cfg))
    rows = methods_table(cfg, model)
    assert {row["method"] for row in rows} == {"lora", "vera", "fourierft", "ia3", "bitfit", "adalora"}
    for row in rows:
        field = row["size_field"]
        lora = {"method": row["method"], "scope": ["query", "value"], "budget": 3000}
        probe = config.from_dict({"model": {"name": str(model_dirs["roberta"]), "head": row["head"]},
                                  "lora": lora | ({field: max(row["r"], 1)} if field else {})})  # fmt: skip
        breakdown, plan = breakdown_for(probe, model)
        built = trainable_params(build_model(probe, model, plan, breakdown)[0])
        if row["method"] == "adalora":  # built at 1.5 x r (build_model checks that count), pruned to r's count
            built = breakdown.total
        if not row["fits"]:
            assert built > 3000
            continue
        assert built == row["total"] <= 3000
        if field:  # one size more no longer fits
            bigger = config.from_dict(
                {"model": probe.model.__dict__, "lora": probe.lora.__dict__ | {field: row["r"] + 1}}
            )
            assert breakdown_for(bigger, model)[0].total > 3000


def test_each_methods_own_settings_are_its_own_and_refused_with_another_method():
    with pytest.raises(LoralabError, match="lora.use_dora is LoRA's: with lora.method vera leave it at False"):
        config.from_dict({"lora": {"method": "vera", "use_dora": True}})
    with pytest.raises(LoralabError, match="lora.n_frequency is FourierFT's: with lora.method lora leave it at 1000"):
        config.from_dict({"lora": {"n_frequency": 64}})
    with pytest.raises(LoralabError, match="lora.n_frequency: must be >= 1, got 0"):  # FourierFT's own check
        config.from_dict({"lora": {"method": "fourierft", "n_frequency": 0}})
    # Each method's settings are declared in its own file and join the lora section with their help.
    from loralab.methods import METHODS

    section = {f.name: f for f in dataclasses.fields(config.LoraConfig)}
    for method in METHODS.values():
        for name in method.option_defaults():
            assert section[name].metadata["doc"].startswith(f"{method.name}: "), name
    with pytest.raises(LoralabError, match="'prefix' is not one of lora, vera, fourierft, ia3, bitfit, adalora"):
        config.from_dict({"lora": {"method": "prefix"}})


def test_over_budget_names_the_methods_own_size():
    cfg = config.from_dict({"lora": {"method": "fourierft", "n_frequency": 100_000}})
    breakdown, _ = breakdown_for(cfg, ROBERTA_BASE)
    with pytest.raises(LoralabError, match=r"the largest lora.n_frequency that fits is \d+"):
        check_budget(cfg, breakdown, ROBERTA_BASE)
