"""Exact trainable-parameter counts from a model's config alone, before any weights are loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config
from .errors import LoralabError
from .scope import AdapterPlan, plan_adapters


@dataclass(frozen=True)
class ModuleShape:
    in_features: int | None  # None for modules that are not Linear
    out_features: int | None
    params: int  # all parameters of the module, its children included


def load_model_config(cfg: Config):
    """The Hugging Face config of cfg.model.name with this task's labels; reads only config.json."""
    from transformers import AutoConfig

    name = cfg.model.name
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise LoralabError(f"model folder {name} has no config.json")
    labels = cfg.data.label_names
    try:
        return AutoConfig.from_pretrained(
            name,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    except (OSError, ValueError) as err:
        raise LoralabError(f"cannot read the model config of '{name}': {str(err).splitlines()[0]}") from err


def module_shapes(model_config) -> dict[str, ModuleShape]:
    """Every module's shape, from a model built on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForSequenceClassification

    with init_empty_weights():
        model = AutoModelForSequenceClassification.from_config(model_config)
    shapes = {}
    for name, module in model.named_modules():
        linear = isinstance(module, torch.nn.Linear)
        shapes[name] = ModuleShape(
            module.in_features if linear else None,
            module.out_features if linear else None,
            sum(p.numel() for p in module.parameters()),
        )
    return shapes


@dataclass
class Breakdown:
    """Trainable parameters by adapted module kind and head, against the budget."""

    rows: list[tuple[str, int]]
    total: int
    budget: int

    @property
    def headroom(self) -> int:
        return self.budget - self.total

    def as_dict(self) -> dict:
        return {"rows": dict(self.rows), "total": self.total, "budget": self.budget, "headroom": self.headroom}

    def format(self) -> str:
        width = max(len(label) for label, _ in self.rows + [("headroom", 0)])
        lines = [f"trainable parameters (budget {self.budget:,})"]
        lines += [f"  {label:<{width}}  {count:>11,}" for label, count in self.rows]
        lines.append(f"  {'total':<{width}}  {self.total:>11,}")
        lines.append(f"  {'headroom':<{width}}  {self.headroom:>11,}")
        return "\n".join(lines)


def lora_params(shape: ModuleShape, rank: int) -> int:
    """A (r x in) plus B (out x r); PEFT adds no bias with bias='none'."""
    return rank * (shape.in_features + shape.out_features)


def count(plan: AdapterPlan, shapes: dict[str, ModuleShape], head_mode: str, budget: int) -> Breakdown:
    by_kind: dict[str, list[str]] = {}
    for name, kind in plan.lora_kind.items():
        by_kind.setdefault(kind, []).append(name)
    rows = []
    for kind, names in by_kind.items():
        if kind == "head":
            continue
        ranks = sorted({plan.lora_ranks[n] for n in names})
        rank_text = "r" + "/".join(str(r) for r in ranks)
        rows.append((f"lora {kind} ({len(names)} x {rank_text})", sum(lora_params(shapes[n], plan.lora_ranks[n]) for n in names)))
    head = sum(shapes[name].params for name in plan.trained_whole)
    head += sum(lora_params(shapes[n], plan.lora_ranks[n]) for n in by_kind.get("head", []))
    rows.append((f"head ({head_mode}: {' + '.join(plan.trained_whole + [f'lora {n}' for n in by_kind.get('head', [])])})", head))
    return Breakdown(rows, sum(n for _, n in rows), budget)


def breakdown_for(cfg: Config, model_config=None) -> tuple[Breakdown, AdapterPlan]:
    model_config = model_config or load_model_config(cfg)
    shapes = module_shapes(model_config)
    plan = plan_adapters(cfg, model_config.model_type, list(shapes))
    return count(plan, shapes, cfg.model.head, cfg.lora.budget), plan


def largest_fitting_rank(cfg: Config, model_config) -> int:
    """The largest uniform lora.r within the budget (the count is linear in r: a + b*r)."""
    from dataclasses import replace

    def total_at(rank: int) -> int:
        probe = replace(cfg, lora=replace(cfg.lora, r=rank))
        return breakdown_for(probe, model_config)[0].total

    fixed, per_rank = total_at(0), total_at(1) - total_at(0)
    if per_rank == 0:
        return 0
    return max(0, (cfg.lora.budget - fixed) // per_rank)


def check_budget(cfg: Config, breakdown: Breakdown, model_config) -> None:
    if breakdown.total > cfg.lora.budget:
        rank = largest_fitting_rank(cfg, model_config)
        hint = f"the largest lora.r that fits is {rank}" if rank >= 1 else "no rank fits: shrink the scope or the head"
        raise LoralabError(
            f"over budget: {breakdown.total:,} trainable parameters > lora.budget {cfg.lora.budget:,} ({hint})\n"
            + breakdown.format()
        )
