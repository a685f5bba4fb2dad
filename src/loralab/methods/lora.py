"""LoRA (Hu et al. 2021) and its variants through PEFT's LoraConfig: DoRA, rsLoRA, PiSSA/OLoRA initialisation,
LoRA+ (an optimizer setting), trained biases of the adapted layers."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import doc
from .base import Method

INITS = ("default", "gaussian", "pissa", "olora")
BIASES = ("none", "lora_only")


@dataclass
class LoraOptions:
    """LoRA's own settings: its variants, each counted exactly."""

    rank_pattern: dict[int, int] = doc("per-layer rank overriding r, e.g. {10: 32, 11: 32}", factory=dict)
    use_rslora: bool = doc("rank-stabilised scaling alpha/sqrt(r) instead of alpha/r", False)
    use_dora: bool = doc("DoRA: adds a trainable magnitude per output feature of each adapted layer", False)
    plus_ratio: float = doc("LoRA+: the B matrices train at lr x this ratio (0: off, plain LoRA)", 0.0)
    init: str = doc(f"initialisation of A and B: {', '.join(INITS)}", "default")
    bias: str = doc("biases that train: none, or lora_only (the adapted layers' biases)", "none")


class Lora(Method):
    name = "lora"
    label = "LoRA"
    title = "LoRA adapter"
    options = LoraOptions

    def check(self, cfg) -> str | None:
        lora = cfg.lora
        if any(r < 1 for r in lora.rank_pattern.values()):
            return "lora.rank_pattern: ranks must be >= 1"
        if lora.plus_ratio < 0:
            return f"lora.plus_ratio: must be >= 0, got {lora.plus_ratio}"
        if lora.init not in INITS:
            return f"lora.init: '{lora.init}' is not one of {', '.join(INITS)}"
        if lora.bias not in BIASES:
            return f"lora.bias: '{lora.bias}' is not one of {', '.join(BIASES)}"
        return None

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        """A (r x in) and B (out x r); DoRA adds a magnitude per output; lora_only bias trains the layer's bias."""
        params = rank * (shape.in_features + shape.out_features)
        if cfg.lora.use_dora:
            params += shape.out_features
        if cfg.lora.bias == "lora_only" and shape.has_bias:
            params += shape.out_features
        return params

    def settings(self, cfg) -> str:
        variants = [name for name, on in (("DoRA", cfg.lora.use_dora), ("rsLoRA", cfg.lora.use_rslora)) if on]
        extra = f", init {cfg.lora.init}" if cfg.lora.init != "default" else ""
        return f"r={cfg.lora.r}, alpha={cfg.lora.alpha:g}, dropout={cfg.lora.dropout:g}{extra}" + (
            f" ({', '.join(variants)})" if variants else ""
        )

    def lr_scale(self, parameter: str, cfg) -> float:
        return cfg.lora.plus_ratio if cfg.lora.plus_ratio > 0 and ".lora_B." in parameter else 1.0

    def why_alone(self, cfg) -> str | None:
        if cfg.lora.use_dora:
            return "a DoRA adapter, which PEFT cannot mix with other adapters in one batch"
        if cfg.lora.bias != "none":
            return f"an adapter that trained the base model's biases (lora.bias: {cfg.lora.bias}), which are shared"
        return None

    def peft_config(self, cfg, plan):
        from peft import LoraConfig

        # Explicit module names (not suffixes) so scope, layers and the head LoRA never match by accident.
        # No task_type: PEFT's SEQ_CLS would force the whole 'classifier' trainable whatever the head mode.
        return LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=sorted(plan.lora_ranks),
            rank_pattern={name: r for name, r in plan.lora_ranks.items() if r != cfg.lora.r},
            modules_to_save=list(plan.trained_whole),
            bias=cfg.lora.bias,
            use_rslora=cfg.lora.use_rslora,
            use_dora=cfg.lora.use_dora,
            init_lora_weights=True if cfg.lora.init == "default" else cfg.lora.init,
        )
