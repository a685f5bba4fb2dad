"""Building the model: a Hugging Face encoder with a classification head, wrapped with PEFT LoRA."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..budget.count import Breakdown, ModelShapes, breakdown_for, shapes_for, with_rank
from ..budget.scope import LAYER_NAME, AdapterPlan
from ..config import Config
from ..errors import LoralabError, warn
from ..methods import method_of

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model")


def check_model_folder(name: str) -> None:
    """A local model folder must hold weights and a tokenizer (a hub id is checked when it loads)."""
    folder = Path(name)
    if folder.is_dir() and not any((folder / f).exists() for f in WEIGHT_FILES):
        raise LoralabError(f"model folder {folder} has no weights ({' or '.join(WEIGHT_FILES[::2])})")
    check_tokenizer_files(folder)


def check_tokenizer_files(folder: Path) -> None:
    if folder.is_dir() and not any(any(folder.glob(pattern)) for pattern in VOCABULARY_FILES):
        # transformers would build a tokenizer of a few special tokens: every word [UNK], chance accuracy.
        raise LoralabError(
            f"model folder {folder} has no tokenizer ({', '.join(VOCABULARY_FILES)}): copy in the tokenizer "
            "files of the model it was saved from (tokenizer.save_pretrained)"
        )


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    check_tokenizer_files(Path(name))
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise LoralabError(f"cannot load the tokenizer of '{name}': {str(err).splitlines()[0]}") from err


# Families whose position ids start after the padding index (RoBERTa's scheme): max_position_embeddings
# includes padding_idx + 1 positions no token uses (roberta-base: 514, of which 512 are usable).
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "data2vec-text", "longformer")


def position_limit(model_config) -> int | None:
    """The most tokens one input can have; None where positions are only relative (DeBERTa-v2/v3)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None or getattr(model_config, "position_biased_input", True) is False:
        return None
    if model_config.model_type in OFFSET_POSITIONS:
        positions -= (model_config.pad_token_id or 0) + 1
    return positions


def check_max_length(cfg: Config, model_config, tokenizer) -> None:
    """data.max_length within the model's positions (past them the first long batch crashes), checked
    before anything is written; a tokenizer that declares a shorter limit is told, not silently overridden."""
    limit, length = position_limit(model_config), cfg.data.max_length
    if limit is not None and length > limit:
        raise LoralabError(
            f"data.max_length {length} is more than {cfg.model.name} can read ({limit} token positions): "
            f"set data.max_length={limit} or lower"
        )
    declared = getattr(tokenizer, "model_max_length", None)
    if declared is not None and declared < min(length, 1_000_000):  # transformers' "no limit" is 1e30
        warn(
            f"the tokenizer of {cfg.model.name} declares model_max_length {declared}, below data.max_length "
            f"{length}: texts are cut at {length} tokens, as data.max_length says"
        )


def uses_token_types(tokenizer, model_config) -> bool:
    """Whether the model reads segment ids (BERT's second text of a pair); RoBERTa and MPNet have one
    segment (type_vocab_size 1, or none), and their tokenizers do not produce them."""
    return "token_type_ids" in tokenizer.model_input_names and getattr(model_config, "type_vocab_size", 0) > 1


def optimizer_groups(model, cfg: Config) -> list[dict]:
    """AdamW parameter groups, one per learning rate: the method's own scale for a parameter (LoRA+ trains the B
    matrices at lr x plus_ratio); layer-wise decay trains encoder layer i at lr x decay^(top layer - i) and the
    embeddings one step below layer 0, the head at lr (the lower a layer, the more general its features: change it
    less)."""
    decay = cfg.train.layer_lr_decay
    layers = [int(m["index"]) for name, _ in model.named_modules() if (m := LAYER_NAME.match(name))]
    top = max(layers, default=0)
    by_scale: dict[float, list] = {}
    method = method_of(cfg)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = method.lr_scale(name, cfg)
        if (m := LAYER_NAME.match(name)) is not None:
            scale *= decay ** (top - int(m["index"]))
        elif ".embeddings." in name:
            scale *= decay ** (top + 1)
        by_scale.setdefault(scale, []).append(p)
    return [{"params": params, "lr": cfg.train.lr * scale} for scale, params in by_scale.items()]


def encoder_layers(model) -> torch.nn.ModuleList | None:
    """The transformer blocks of a Hugging Face encoder (BERT-style `encoder.layer`, DistilBERT's
    `transformer.layer`), or None for a layout without them."""
    backbone = model.base_model
    encoder = getattr(backbone, "encoder", None) or getattr(backbone, "transformer", None)
    layers = getattr(encoder, "layer", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def checkpoint_layers(model) -> None:
    """Activation checkpointing for any family here (transformers has it for some only, not MPNet): each
    block keeps just its input for the backward pass and runs again there. Non-reentrant checkpointing
    restores the RNG state, so dropout draws the same masks: the same numbers, a fraction of the memory."""
    import functools

    from torch.utils.checkpoint import checkpoint

    layers = encoder_layers(model)
    if layers is None:
        raise LoralabError(f"train.gradient_checkpointing is not available for {model.config.model_type}")
    for layer in layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


def pool_mean_into_first_token(model) -> None:
    """Make the head of a Hugging Face classifier read the mean of the last layer over real tokens.

    Every head here reads position 0 of the last layer (BERT's through its pooler), so writing the
    masked mean there is mean pooling, as sentence-transformers models were trained, with the head,
    its parameter count and the saved weights unchanged. Call it before wrapping with PEFT.
    """
    backbone = model.base_model
    layers = encoder_layers(model)
    if layers is None:
        raise LoralabError(
            f"model.pooling: mean is not available for {model.config.model_type} (no encoder layers found)"
        )
    batch = {}

    def remember_mask(module, args, kwargs):
        batch["attention_mask"] = kwargs.get("attention_mask")

    # The last layer, not the encoder: DeBERTa reads its output from the hidden-states tuple.
    def mean_at_first_token(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        mask = batch["attention_mask"]
        weights = (torch.ones(hidden.shape[:2], device=hidden.device) if mask is None else mask.float()).unsqueeze(-1)
        mean = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
        pooled = torch.cat([mean.to(hidden.dtype).unsqueeze(1), hidden[:, 1:]], dim=1)
        return (pooled, *output[1:]) if isinstance(output, tuple) else pooled

    backbone.register_forward_pre_hook(remember_mask, with_kwargs=True)
    layers[-1].register_forward_hook(mean_at_first_token)


def load_classifier(cfg: Config, model_config) -> tuple[torch.nn.Module, set[str]]:
    """The pretrained encoder with a classification head for the config's labels, pooled as configured.

    Also returns the names of the parameters the checkpoint lacked (or had in another shape), which
    Hugging Face initialised at random: a run that freezes any of them must save them (see frozen_weights).
    """
    from transformers import AutoModelForSequenceClassification

    check_model_folder(cfg.model.name)
    try:
        # A folder already fine-tuned for another label count: its head is replaced, not an error.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            cfg.model.name, config=copy.deepcopy(model_config), ignore_mismatched_sizes=True, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        raise LoralabError(f"cannot load model '{cfg.model.name}': {str(err).splitlines()[0]}") from err
    fresh = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
    if cfg.model.pooling == "mean":
        pool_mean_into_first_token(model)
    return model, fresh & {name for name, _ in model.named_parameters()}


def frozen_names(fresh: set[str], plan: AdapterPlan) -> list[str]:
    """The randomly initialised parameters that will not train (e.g. RoBERTa's `classifier.dense` under
    `head: out_proj` or `lora`): a reload would draw them anew, so a run saves them with its adapter."""
    trained = tuple(f"{module}." for module in plan.trained_whole)
    return [name for name in sorted(fresh) if not name.startswith(trained)]


def frozen_weights(model, fresh: set[str], plan: AdapterPlan) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in frozen_names(fresh, plan)}


def cast_frozen_linears(model, precision: str) -> None:
    """Under bf16/fp16 autocast every Linear weight is cast to half precision at every step, one cast
    per weight per forward (transformers#15026); a frozen one can be cast once instead. Autocast runs
    Linear layers in half precision anyway, so the arithmetic is the same. Not with DoRA, which takes
    norms of the base weight outside autocast's casts: decided here, for training and every later answer alike."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None or any(getattr(m, "lora_magnitude_vector", None) for m in model.modules()):
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and not any(p.requires_grad for p in module.parameters()):
            module.to(dtype)


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(cfg: Config, shapes: ModelShapes, plan: AdapterPlan, breakdown: Breakdown):
    """Load the pretrained weights, add the adapters, and check the trainable count against the plan.

    Returns the PEFT model and the frozen random weights it must be saved with.
    """
    base, fresh = load_classifier(cfg, shapes.config)
    if cfg.model.finetune == "full":  # every weight trains: nothing is frozen, no adapter
        model, frozen = base, {}
    else:
        frozen = frozen_weights(base, fresh, plan)
        model = method_of(cfg).attach(base, cfg, plan)
    built, expected = trainable_params(model), breakdown.total
    if (start := method_of(cfg).start_size(cfg)) is not None:  # AdaLoRA trains from more than it keeps
        expected = breakdown_for(with_rank(cfg, start), shapes)[0].total
    if built != expected:
        raise LoralabError(f"bug: the built model trains {built:,} parameters but the plan counted {expected:,}")
    return model, frozen


def load_full(cfg: Config, folder: Path):
    """A fully fine-tuned run's saved model, pooled as it was trained."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    if cfg.model.pooling == "mean":
        pool_mean_into_first_token(model)
    return model


def with_base(cfg: Config, run: Path, base_model: str | None) -> Config:
    """A run's config on the base it is loaded on here: `--base-model` where given, else the one it was
    trained on, which must be on this machine where it was a local folder."""
    from ..config import local_path_or_id, missing_here

    if base_model:
        cfg.model.name = local_path_or_id(base_model)
    elif missing_here(cfg.model.name):
        raise LoralabError(
            f"run {run} was trained on the model folder {cfg.model.name}, which is not on this machine: "
            "pass --base-model FOLDER (the same pretrained model)"
        )
    return cfg


def load_trained(run_path: str | Path, which: str = "best", merged: bool = False, base_model: str | None = None):
    """A run's config, tokenizer and model with its saved adapter; merged into plain weights if asked.

    Refuses a run whose adapter sits on frozen random weights that were not saved with it (runs of
    loralab 0.1 with `head: out_proj` or `lora` on RoBERTa, MPNet or DeBERTa-v2): a reload
    would draw new ones and answer wrongly without a word.
    """
    from ..runs.rundir import RunDir

    run = RunDir(Path(run_path))
    folder = run.adapter(which)
    cfg = with_base(run.read_config(), run.path, base_model)
    shapes = shapes_for(cfg)  # first: a model folder that is not there is said in one line
    tokenizer = load_tokenizer(cfg.model.name)
    check_max_length(cfg, shapes.config, tokenizer)  # a run saved before this check could exceed it
    return cfg, tokenizer, load_adapter_folder(cfg, folder, merged)


def load_adapter_folder(cfg: Config, folder: Path, merged: bool = False):
    """The base model with the adapter (and head, and frozen weights) saved in `folder`: a run's best/ or
    last/, or an adapter-only export; merged into plain weights if asked. A full fine-tuning's folder is
    the whole model."""
    if cfg.model.finetune == "full":
        return load_full(cfg, folder).eval()
    model = method_of(cfg).load(base_for_adapter(cfg, folder), folder)
    if merged:
        try:
            model = model.merge_and_unload()
        except Exception as err:  # PEFT raises several types for layers it cannot merge
            raise LoralabError(f"cannot merge the adapter of {folder} into {cfg.model.name}: {err}") from err
    return model.eval()


def base_for_adapter(cfg: Config, folder: Path, num_labels: int | None = None):
    """The pretrained classifier an adapter in `folder` was trained on, its frozen random weights restored;
    `num_labels`: a head of that many outputs instead of cfg's (a server's shared base, see serving/models.py)."""
    from ..runs.frozen import load_frozen_into, read_frozen

    shapes = shapes_for(cfg)
    model_config = shapes.config
    if num_labels is not None:
        model_config = copy.deepcopy(model_config)
        model_config.num_labels = num_labels
    base, fresh = load_classifier(cfg, model_config)
    saved = read_frozen(folder)
    missing = [name for name in frozen_names(fresh, breakdown_for(cfg, shapes)[1]) if name not in saved]
    if missing:
        raise LoralabError(
            f"{folder} cannot be reproduced: its adapter was trained on randomly initialised frozen weights "
            f"({', '.join(missing)}) that were not saved with it (loralab before 0.2); train it again"
        )
    load_frozen_into(base, saved)
    return base
