"""Module shapes from config.json by arithmetic: the budget planner's fast path, with neither torch nor
transformers imported (together they take seconds to load; the arithmetic, milliseconds).

For each family loralab maps (budget/scope.py), every Linear module of its sequence classifier (the encoder's
layers and the head, named as transformers names them) with its shape, and the root's parameter count (every
weight: a full fine-tuning's count). A config this arithmetic does not know field for field (a family or a
setting outside it, a field left to transformers' defaults) gets None, and the caller builds the model on the
meta device instead, as training does. Tests hold both against each other for every family.
"""

from __future__ import annotations

import json
from pathlib import Path

from .count import ModuleShape


def linear(shapes: dict, name: str, n_in: int, n_out: int, bias: bool = True) -> int:
    """Record a Linear module and return its parameters."""
    params = n_in * n_out + (n_out if bias else 0)
    shapes[name] = ModuleShape(n_in, n_out, bias, params)
    return params


def _bert_like_layers(shapes: dict, prefix: str, c: dict, inner: dict[str, str]) -> int:
    """The encoder layers of BERT, RoBERTa and MPNet: four attention projections, two feed-forward layers and two
    LayerNorms each; returns their parameters."""
    h, i, total = c["hidden_size"], c["intermediate_size"], 0
    for layer in range(c["num_hidden_layers"]):
        at = f"{prefix}.encoder.layer.{layer}."
        for word in ("query", "key", "value", "attention_output"):
            total += linear(shapes, at + inner[word], h, h)
        total += linear(shapes, at + "intermediate.dense", h, i) + linear(shapes, at + "output.dense", i, h)
        total += 2 * 2 * h  # the attention's and the output's LayerNorm
    return total


def _roberta(c: dict, labels: int) -> dict | None:
    shapes, h = {}, c["hidden_size"]
    inner = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_output": "attention.output.dense"}  # fmt: skip
    embeddings = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"]) * h + 2 * h
    total = embeddings + _bert_like_layers(shapes, "roberta", c, inner)  # no pooler: the head reads the first token
    total += linear(shapes, "classifier.dense", h, h) + linear(shapes, "classifier.out_proj", h, labels)
    return shapes | {"": ModuleShape(None, None, False, total)}


def _bert(c: dict, labels: int) -> dict | None:
    shapes, h = {}, c["hidden_size"]
    inner = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_output": "attention.output.dense"}  # fmt: skip
    embeddings = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"]) * h + 2 * h
    total = embeddings + _bert_like_layers(shapes, "bert", c, inner)
    total += linear(shapes, "bert.pooler.dense", h, h) + linear(shapes, "classifier", h, labels)
    return shapes | {"": ModuleShape(None, None, False, total)}


def _mpnet(c: dict, labels: int) -> dict | None:
    shapes, h = {}, c["hidden_size"]
    inner = {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
             "attention_output": "attention.attn.o"}  # fmt: skip
    embeddings = (c["vocab_size"] + c["max_position_embeddings"]) * h + 2 * h  # no token types
    relative = c["relative_attention_num_buckets"] * c["num_attention_heads"]  # the encoder's position bias
    total = embeddings + relative + _bert_like_layers(shapes, "mpnet", c, inner)
    total += linear(shapes, "classifier.dense", h, h) + linear(shapes, "classifier.out_proj", h, labels)
    return shapes | {"": ModuleShape(None, None, False, total)}


def _distilbert(c: dict, labels: int) -> dict | None:
    shapes, d, i = {}, c["dim"], c["hidden_dim"]
    total = (c["vocab_size"] + c["max_position_embeddings"]) * d + 2 * d
    for layer in range(c["n_layers"]):
        at = f"distilbert.transformer.layer.{layer}."
        for name in ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"):
            total += linear(shapes, at + name, d, d)
        total += linear(shapes, at + "ffn.lin1", d, i) + linear(shapes, at + "ffn.lin2", i, d) + 2 * 2 * d
    total += linear(shapes, "pre_classifier", d, d) + linear(shapes, "classifier", d, labels)
    return shapes | {"": ModuleShape(None, None, False, total)}


def _deberta_v2(c: dict, labels: int) -> dict | None:
    # Only DeBERTa's plain layout: one embedding width, attention keys shared with the relative positions, no
    # convolution; anything else goes to the meta-device model.
    if c.get("embedding_size", c["hidden_size"]) != c["hidden_size"] or c.get("conv_kernel_size", 0):
        return None
    relative = c.get("relative_attention", False)
    if relative and not c.get("share_att_key", False):
        return None
    shapes, h, i = {}, c["hidden_size"], c["intermediate_size"]
    total = c["vocab_size"] * h + 2 * h
    total += c["max_position_embeddings"] * h if c.get("position_biased_input", True) else 0
    total += c.get("type_vocab_size", 0) * h
    if relative:
        buckets = c.get("position_buckets", -1)
        size = buckets if buckets > 0 else c.get("max_relative_positions", -1)
        size = size if size >= 1 else c["max_position_embeddings"]
        total += 2 * size * h
        norms = [x.strip() for x in c.get("norm_rel_ebd", "none").lower().split("|")]
        total += 2 * h if "layer_norm" in norms else 0
    for layer in range(c["num_hidden_layers"]):
        at = f"deberta.encoder.layer.{layer}."
        for name in ("query_proj", "key_proj", "value_proj"):
            total += linear(shapes, at + f"attention.self.{name}", h, h)
        total += linear(shapes, at + "attention.output.dense", h, h)
        total += linear(shapes, at + "intermediate.dense", h, i) + linear(shapes, at + "output.dense", i, h)
        total += 2 * 2 * h
    pooled = c.get("pooler_hidden_size", h)
    total += linear(shapes, "pooler.dense", pooled, pooled) + linear(shapes, "classifier", pooled, labels)
    return shapes | {"": ModuleShape(None, None, False, total)}


FAMILIES = {"roberta": _roberta, "bert": _bert, "mpnet": _mpnet, "distilbert": _distilbert, "deberta-v2": _deberta_v2}


def config_json(folder: Path) -> dict | None:
    """A model's config.json as a dict (None: no such file)."""
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def module_shapes(config: dict, labels: int) -> dict[str, ModuleShape] | None:
    """The Linear modules and the root of a sequence classifier with `labels` outputs, from its config.json;
    None where the arithmetic does not know this config (the caller builds the model on the meta device)."""
    recipe = FAMILIES.get(config.get("model_type"))
    if recipe is None:
        return None
    try:
        return recipe(config, labels)
    except KeyError:  # a field left to transformers' defaults: only transformers knows its value
        return None
