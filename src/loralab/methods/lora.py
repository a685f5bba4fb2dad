"""LoRA (Hu et al. 2021) and its variants through PEFT's LoraConfig: DoRA, rsLoRA, PiSSA/OLoRA initialisation,
LoRA+ (an optimizer setting), trained biases of the adapted layers."""

from __future__ import annotations

from .base import Method


class Lora(Method):
    name = "lora"
    mixes_in_batches = True

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        """A (r x in) and B (out x r); DoRA adds a magnitude per output; lora_only bias trains the layer's bias."""
        params = rank * (shape.in_features + shape.out_features)
        if cfg.lora.use_dora:
            params += shape.out_features
        if cfg.lora.bias == "lora_only" and shape.has_bias:
            params += shape.out_features
        return params

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
