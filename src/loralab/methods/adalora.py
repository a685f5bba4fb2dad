"""AdaLoRA (Zhang et al. 2023): LoRA in SVD form (P diag(E) Q) whose ranks PEFT moves between layers while it
trains, pruning the least important singular triplets until lora.r per layer remain on average.

What is counted is its final budget: lora.r x (in + out + 1) per adapted layer, the average rank left after the
last pruning. It starts at lora.init_r (the paper's 1.5 x the final) and prunes between 10% and 80% of the
steps; only adapters saved after the last pruning count as the run's best or last, so every saved adapter is
within the budget. The ranks move between layers, so the count is exact only where every adapted layer has the
same in + out: a scope that mixes shapes (attention with feed-forward layers, a LoRA head) is refused."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..fields import doc

if TYPE_CHECKING:  # torch loads with the first model, not with the method table (loralab --help)
    import torch

from .base import Method


@dataclass
class AdaLoraOptions:
    init_r: int = doc("the rank each adapted layer trains from before pruning (0: 1.5 x lora.r)", 0)


class AdaLora(Method):
    name = "adalora"
    label = "AdaLoRA"
    title = "AdaLoRA adapter (LoRA in SVD form, its ranks moved between layers while it trained)"
    resumable = False  # PEFT's rank allocator keeps its importance scores in memory only
    options = AdaLoraOptions

    def check(self, cfg) -> str | None:
        if cfg.lora.init_r != 0 and cfg.lora.init_r <= cfg.lora.r:
            r = cfg.lora.r
            return f"lora.init_r: AdaLoRA prunes from it down to lora.r, so it must be above {r} (0: 1.5 x lora.r)"
        if cfg.train.epochs <= 0 and cfg.train.steps < 10:
            return f"train.steps: AdaLoRA prunes over the run's steps and needs at least 10, got {cfg.train.steps}"
        return None

    def layer_params(self, shape, rank: int, cfg, kind: str) -> int:
        return rank * (shape.in_features + shape.out_features + 1)  # P, Q and the singular values E

    def plan_problem(self, plan, shapes, cfg) -> str | None:
        sizes = {shapes[name].in_features + shapes[name].out_features for name in plan.lora_ranks}
        if len(sizes) > 1:
            return (
                f"lora.method adalora moves rank between layers, so its final count is exact only where every adapted "
                f"layer has the same in + out; this scope and head mix {', '.join(map(str, sorted(sizes)))}: "
                "adapt only attention layers or only feed-forward layers, with model.head full or out_proj"
            )
        return None

    def start_size(self, cfg) -> int:
        return cfg.lora.init_r or max(cfg.lora.r + 1, round(1.5 * cfg.lora.r))

    def schedule(self, cfg) -> tuple[int, int]:
        """(tinit, tfinal): the steps before pruning starts, and after it ends (at least one, so that PEFT's
        final allocation, at step total - tfinal, falls on a step the loop runs)."""
        steps = cfg.train.steps
        return steps // 10, max(1, steps // 5)

    def keeps_from_step(self, cfg) -> int:
        return cfg.train.steps - self.schedule(cfg)[1] + 1

    def settings(self, cfg) -> str:
        return f"r={cfg.lora.r} on average after pruning, from {self.start_size(cfg)}, alpha={cfg.lora.alpha:g}"

    def peft_config(self, cfg, plan):
        from peft import AdaLoraConfig

        tinit, tfinal = self.schedule(cfg)
        return AdaLoraConfig(
            init_r=self.start_size(cfg),
            target_r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=sorted(plan.lora_ranks),
            modules_to_save=list(plan.trained_whole),
            total_step=cfg.train.steps,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, cfg.train.steps // 100),
        )

    def load(self, base, folder):
        with warnings.catch_warnings():
            # PEFT checks rank_pattern keys against module names, but AdaLoRA's name its lora_E tensors: every key
            # "matched no targeted module" although AdaLoRA's own loading resizes each layer by them.
            warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
            return super().load(base, folder)

    def after_step(self, model, step: int) -> None:
        """PEFT's importance update and rank allocation: after the optimizer step, before the gradients go."""
        model.base_model.update_and_allocate(step)

    def regularization(self, model) -> torch.Tensor | None:
        """AdaLoRA's orthogonality penalty on P and Q, as PEFT's AdaLoraModel.forward adds it to a loss that the
        Hugging Face model computed (loralab computes the task's loss itself, so it is added here)."""
        import torch

        weight = model.peft_config[model.active_adapter].orth_reg_weight
        terms = []
        for name, p in model.named_parameters():
            if p.requires_grad and (".lora_A." in name or ".lora_B." in name):
                gram = p @ p.T if ".lora_A." in name else p.T @ p
                terms.append(torch.linalg.matrix_norm(gram - torch.eye(len(gram), device=p.device, dtype=p.dtype)))
        return weight * torch.stack(terms).mean() if terms else None
