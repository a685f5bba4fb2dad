"""Module shapes from config.json by arithmetic: the budget planner's fast path, with neither torch nor
transformers imported (together they take seconds to load; the arithmetic, milliseconds).

For each family loralab maps (budget/scope.py names their modules), every Linear module of its sequence
classifier (the encoder's layers and the head, named as transformers names them) with its shape, and the root's
parameter count (every weight: a full fine-tuning's count). A config this arithmetic does not know field for
field (a family or a setting outside it, a field left to transformers' defaults) gets None, and the caller builds
the model on the meta device instead, as training does. Tests hold both against each other for every family.
"""

from __future__ import annotations

import json
from pathlib import Path

from .count import ModuleShape
from .scope import FAMILIES


def linear(shapes: dict, name: str, n_in: int, n_out: int) -> int:
    """Record a Linear module (every one here has a bias) and return its parameters."""
    params = n_in * n_out + n_out
    shapes[name] = ModuleShape(n_in, n_out, True, params)
    return params


def layers(shapes: dict, stack: str, family, count: int, width: int, inner: int) -> int:
    """The encoder's layers: four attention projections, the feed-forward's two layers and two LayerNorms each."""
    total = 0
    for layer in range(count):
        at = f"{stack}.{layer}."
        for word in ("query", "key", "value", "attention_output"):
            total += linear(shapes, at + family.scope[word], width, width)
        total += linear(shapes, at + family.scope["ffn_in"], width, inner)
        total += linear(shapes, at + family.scope["ffn_out"], inner, width) + 2 * 2 * width
    return total


def embeddings(c: dict, model_type: str) -> int | None:
    """The embeddings' parameters (and any encoder-wide weights): words, positions, token types, a LayerNorm;
    None for a layout the arithmetic does not know."""
    h = c.get("dim", c.get("hidden_size"))
    words = c["vocab_size"] * h + 2 * h
    if model_type in ("roberta", "bert"):
        return words + (c["max_position_embeddings"] + c["type_vocab_size"]) * h
    if model_type == "mpnet":  # no token types; a relative position bias per head in the encoder
        return words + c["max_position_embeddings"] * h + c["relative_attention_num_buckets"] * c["num_attention_heads"]
    if model_type == "distilbert":
        return words + c["max_position_embeddings"] * h
    # DeBERTa-v2/v3, in its plain layout only: one embedding width, attention keys shared with the relative
    # positions, no convolution.
    relative = c.get("relative_attention", False)
    if c.get("embedding_size", h) != h or c.get("conv_kernel_size", 0) or (relative and not c.get("share_att_key")):
        return None
    total = words + c.get("type_vocab_size", 0) * h
    total += c["max_position_embeddings"] * h if c.get("position_biased_input", True) else 0
    if relative:
        buckets = c.get("position_buckets", -1)
        size = buckets if buckets > 0 else c.get("max_relative_positions", -1)
        total += 2 * (size if size >= 1 else c["max_position_embeddings"]) * h
        norms = [x.strip() for x in c.get("norm_rel_ebd", "none").lower().split("|")]
        total += 2 * h if "layer_norm" in norms else 0
    return total


# Each family's encoder layers as transformers names them, and its config's names for depth and widths.
STACKS = {
    "roberta": ("roberta.encoder.layer", "num_hidden_layers", "hidden_size", "intermediate_size"),
    "bert": ("bert.encoder.layer", "num_hidden_layers", "hidden_size", "intermediate_size"),
    "mpnet": ("mpnet.encoder.layer", "num_hidden_layers", "hidden_size", "intermediate_size"),
    "distilbert": ("distilbert.transformer.layer", "n_layers", "dim", "hidden_dim"),
    "deberta-v2": ("deberta.encoder.layer", "num_hidden_layers", "hidden_size", "intermediate_size"),
}


def config_json(folder: Path) -> dict | None:
    """A model's config.json as a dict (None: no such file)."""
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def module_shapes(c: dict, labels: int) -> dict[str, ModuleShape] | None:
    """The Linear modules and the root of a sequence classifier with `labels` outputs, from its config.json;
    None where the arithmetic does not know this config (the caller builds the model on the meta device)."""
    model_type = c.get("model_type")
    if model_type not in STACKS:
        return None
    stack, depth, width, inner = STACKS[model_type]
    family, shapes = FAMILIES[model_type], {}
    try:
        total = embeddings(c, model_type)
        if total is None:
            return None
        total += layers(shapes, stack, family, c[depth], c[width], c[inner])
        # The head: its hidden layer (RoBERTa's dense, BERT's pooler, ...) and its output layer.
        pooled = c.get("pooler_hidden_size", c[width]) if model_type == "deberta-v2" else c[width]
        total += linear(shapes, family.head_dense, pooled, pooled) + linear(shapes, family.head_out, pooled, labels)
    except KeyError:  # a field left to transformers' defaults: only transformers knows its value
        return None
    return shapes | {"": ModuleShape(None, None, False, total)}
