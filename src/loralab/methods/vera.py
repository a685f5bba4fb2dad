"""VeRA (Kopiczko et al. 2024): one pair of frozen random matrices shared by every adapted layer (saved with the
adapter, so a reload is exact), and per layer two trained scaling vectors: d of size r, b of size out."""

from __future__ import annotations

from .base import Method


class Vera(Method):
    name = "vera"
    label = "VeRA"
    title = "VeRA adapter (shared frozen random matrices, saved with it, and two trained vectors per layer)"

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        return rank + shape.out_features

    def peft_config(self, cfg, plan):
        from peft import VeraConfig

        return VeraConfig(
            r=cfg.lora.r,
            target_modules=sorted(plan.lora_ranks),
            vera_dropout=cfg.lora.dropout,
            modules_to_save=list(plan.trained_whole),
            save_projection=True,
        )
