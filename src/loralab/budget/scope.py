"""Which modules a configuration adapts: one scope vocabulary mapped onto each model family's names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..config import SCOPE_WORDS, Config
from ..errors import LoralabError

LAYER_NAME = re.compile(r"^(?P<stack>.*\.layer)\.(?P<index>\d+)\.(?P<inner>.+)$")


@dataclass(frozen=True)
class Family:
    """Module names of one architecture: scope word -> path inside an encoder layer, and the head."""

    scope: dict[str, str]
    head_out: str
    head_dense: str | None  # the hidden->hidden layer feeding head_out (a pooler, for BERT-like models)


_BERT_LIKE = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
_ROBERTA = Family(_BERT_LIKE, head_out="classifier.out_proj", head_dense="classifier.dense")

FAMILIES: dict[str, Family] = {
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "electra": _ROBERTA,
    "bert": Family(_BERT_LIKE, head_out="classifier", head_dense="bert.pooler.dense"),
    "mpnet": Family(
        {
            "query": "attention.attn.q",
            "key": "attention.attn.k",
            "value": "attention.attn.v",
            "attention_output": "attention.attn.o",
            "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense",
        },
        head_out="classifier.out_proj",
        head_dense="classifier.dense",
    ),
    "distilbert": Family(
        {
            "query": "attention.q_lin",
            "key": "attention.k_lin",
            "value": "attention.v_lin",
            "attention_output": "attention.out_lin",
            "ffn_in": "ffn.lin1",
            "ffn_out": "ffn.lin2",
        },
        head_out="classifier",
        head_dense="pre_classifier",
    ),
    "deberta-v2": Family(
        {
            "query": "attention.self.query_proj",
            "key": "attention.self.key_proj",
            "value": "attention.self.value_proj",
            "attention_output": "attention.output.dense",
            "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense",
        },
        head_out="classifier",
        head_dense="pooler.dense",
    ),
}


def family_of(model_type: str) -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise LoralabError(
            f"model type '{model_type}' is not supported (supported: {', '.join(sorted(FAMILIES))})"
        ) from None


@dataclass
class AdapterPlan:
    """What trains: LoRA modules with their ranks, and modules trained whole (PEFT's modules_to_save)."""

    lora_ranks: dict[str, int] = field(default_factory=dict)
    lora_kind: dict[str, str] = field(default_factory=dict)  # module name -> scope word, or "head"
    trained_whole: list[str] = field(default_factory=list)


def plan_adapters(cfg: Config, model_type: str, module_names: list[str]) -> AdapterPlan:
    """Resolve scope, layers, rank pattern and head mode to concrete module names of this model."""
    family = family_of(model_type)
    layer_modules = [(int(m["index"]), m["inner"], name) for name in module_names if (m := LAYER_NAME.match(name))]
    n_layers = 1 + max((index for index, _, _ in layer_modules), default=-1)
    layers = cfg.lora.layers if cfg.lora.layers is not None else list(range(n_layers))
    for where, indices in (("lora.layers", layers), ("lora.rank_pattern", cfg.lora.rank_pattern)):
        for index in indices:
            if not 0 <= index < n_layers:
                raise LoralabError(f"{where}: layer {index} does not exist (the model has layers 0-{n_layers - 1})")

    plan = AdapterPlan()
    for word in cfg.lora.scope:
        if word in SCOPE_WORDS:
            matches = [(i, name) for i, inner, name in layer_modules if inner == family.scope[word]]
        else:
            matches = [(i, name) for i, inner, name in layer_modules if inner == word or inner.endswith("." + word)]
        if not matches:
            raise LoralabError(
                f"unknown scope name '{word}' for {model_type}: use {', '.join(SCOPE_WORDS)}, "
                f"or a module name inside a layer such as '{family.scope['value']}'"
            )
        for index, name in matches:
            if index in layers:
                plan.lora_ranks[name] = cfg.lora.rank_pattern.get(index, cfg.lora.r)
                plan.lora_kind[name] = word

    head = cfg.model.head
    if head == "full":
        plan.trained_whole = [family.head_dense, family.head_out] if family.head_dense else [family.head_out]
    else:
        plan.trained_whole = [family.head_out]
    if head == "lora":
        plan.lora_ranks[family.head_dense] = cfg.lora.r
        plan.lora_kind[family.head_dense] = "head"
    # PEFT picks modules_to_save by name suffix; refuse a plan it would widen (e.g. 'classifier' also
    # matching DistilBERT's 'pre_classifier').
    wrapped = {name for name in module_names if any(name.endswith(t) for t in plan.trained_whole)}
    if wrapped != set(plan.trained_whole):
        extra = ", ".join(sorted(wrapped - set(plan.trained_whole)))
        raise LoralabError(f"model.head: '{head}' is not available for {model_type} (PEFT would also train {extra})")
    return plan


def canonical_scope(modules: list[str]) -> list[str]:
    """Scope words in the vocabulary's order (query before key before value ...), others after."""
    return sorted(modules, key=lambda m: (SCOPE_WORDS.index(m) if m in SCOPE_WORDS else len(SCOPE_WORDS), m))
