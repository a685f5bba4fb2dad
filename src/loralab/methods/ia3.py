"""(IA)^3 (Liu et al. 2022): one trained vector per adapted layer that rescales its output, or its input for the
feed-forward output layer (ffn_out), as PEFT's feedforward_modules do. No size to choose: the scope sets it."""

from __future__ import annotations

from .base import Method


class IA3(Method):
    name = "ia3"
    label = "(IA)^3"
    size_field = None
    title = "(IA)^3 adapter (one trained scaling vector per layer)"

    def settings(self, cfg) -> str:
        return "no size to choose"

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        return shape.in_features if kind == "ffn_out" else shape.out_features

    def peft_config(self, cfg, plan):
        from peft import IA3Config

        return IA3Config(
            target_modules=sorted(plan.lora_ranks),
            feedforward_modules=sorted(name for name, kind in plan.lora_kind.items() if kind == "ffn_out"),
            modules_to_save=list(plan.trained_whole),
        )

    def size_label(self, sizes: list[int]) -> str:
        return "vectors"
