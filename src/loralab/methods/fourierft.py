"""FourierFT (Gao et al. 2024): each adapted layer's update is the inverse Fourier transform of lora.n_frequency
trained spectral coefficients at random frequencies (drawn from a seed saved in the adapter's config)."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import doc
from .base import Method


@dataclass
class FourierFTOptions:
    n_frequency: int = doc("trained spectral coefficients per adapted layer", 1000)


class FourierFT(Method):
    name = "fourierft"
    label = "FourierFT"
    size_field = "n_frequency"
    options = FourierFTOptions

    def check(self, cfg) -> str | None:
        return None if cfg.lora.n_frequency >= 1 else f"lora.n_frequency: must be >= 1, got {cfg.lora.n_frequency}"

    title = "FourierFT adapter (trained spectral coefficients per layer)"

    def settings(self, cfg) -> str:
        return f"n_frequency={cfg.lora.n_frequency}, scaling={cfg.lora.alpha:g}"

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        return cfg.lora.n_frequency

    def size_limit(self, plan, shapes) -> int | None:
        """Each layer's coefficients sit at distinct frequencies of its in x out spectrum."""
        return min((shapes[name].in_features * shapes[name].out_features for name in plan.lora_ranks), default=None)

    def peft_config(self, cfg, plan):
        from peft import FourierFTConfig

        return FourierFTConfig(
            n_frequency=cfg.lora.n_frequency,
            scaling=cfg.lora.alpha,
            target_modules=sorted(plan.lora_ranks),
            modules_to_save=list(plan.trained_whole),
        )

    def size_label(self, sizes: list[int]) -> str:
        return "n" + "/".join(str(n) for n in sizes)
