import pytest

from loralab import config
from loralab.budget.scope import plan_adapters
from loralab.errors import LoralabError

ROBERTA_NAMES = [
    f"roberta.encoder.layer.{i}.{inner}"
    for i in range(4)
    for inner in (
        "attention.self.query",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
] + ["classifier", "classifier.dense", "classifier.out_proj"]


def plan(**lora):
    return plan_adapters(config.from_dict({"lora": lora}), "roberta", ROBERTA_NAMES)


def test_ffn_out_does_not_match_attention_output():
    names = set(plan(scope=["ffn_out"]).lora_ranks)
    assert names == {f"roberta.encoder.layer.{i}.output.dense" for i in range(4)}


def test_layers_and_rank_pattern():
    p = plan(scope=["value"], r=4, layers=[2, 3], rank_pattern={3: 9})
    assert p.lora_ranks == {
        "roberta.encoder.layer.2.attention.self.value": 4,
        "roberta.encoder.layer.3.attention.self.value": 9,
    }


def test_raw_module_names_are_accepted():
    assert set(plan(scope=["self.query"]).lora_ranks) == {
        f"roberta.encoder.layer.{i}.attention.self.query" for i in range(4)
    }


def test_unknown_scope_name():
    with pytest.raises(LoralabError, match="unknown scope name 'values'"):
        plan(scope=["values"])


def test_layer_out_of_range():
    with pytest.raises(LoralabError, match=r"lora.layers: layer 7 does not exist \(the model has layers 0-3\)"):
        plan(layers=[7])


def test_head_modes():
    full = plan_adapters(config.from_dict({}), "roberta", ROBERTA_NAMES)
    assert full.trained_whole == ["classifier.dense", "classifier.out_proj"]
    lora = plan_adapters(config.from_dict({"model": {"head": "lora"}}), "roberta", ROBERTA_NAMES)
    assert lora.trained_whole == ["classifier.out_proj"] and lora.lora_kind["classifier.dense"] == "head"


def test_unsupported_family():
    with pytest.raises(LoralabError, match="model type 'gpt2' is not supported"):
        plan_adapters(config.from_dict({}), "gpt2", ROBERTA_NAMES)
