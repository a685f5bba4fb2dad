"""Exact trainable-parameter counts from a model's config alone, before any weights are loaded."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..config import Config, missing_here
from ..errors import LoralabError
from .scope import AdapterPlan, plan_adapters


@dataclass(frozen=True)
class ModuleShape:
    in_features: int | None  # None for modules that are not Linear
    out_features: int | None
    has_bias: bool
    params: int  # all parameters of the module, its children included


@dataclass
class ModelShapes:
    """A model's Hugging Face config and the shape of every module, read once for many counts."""

    config: object
    modules: dict[str, ModuleShape]

    @classmethod
    def of(cls, model_config) -> ModelShapes:
        return cls(model_config, module_shapes(model_config))

    @property
    def model_type(self) -> str:
        return self.config.model_type


def shapes_for(cfg: Config) -> ModelShapes:
    """The shapes of cfg's model with cfg's labels (named, or from the data): read once per process, cached."""
    from ..data import label_names_of

    key = (cfg.model.name, tuple(label_names_of(cfg.data)), cfg.data.task)
    if key in _FAILED:  # a sweep asks for every trial: one hub timeout, not one per trial
        raise _FAILED[key]
    try:
        return _cached_shapes(*key)
    except LoralabError as err:
        _FAILED[key] = err
        raise


_FAILED: dict[tuple, LoralabError] = {}


@functools.lru_cache(maxsize=16)
def _cached_shapes(name: str, labels: tuple[str, ...], task: str) -> ModelShapes:
    from ..config import DataConfig, ModelConfig

    data = DataConfig(label_names=list(labels), task=task)
    return ModelShapes.of(load_model_config(Config(model=ModelConfig(name=name), data=data)))


HUB_CONFIGS = Path(__file__).parents[1] / "hub_configs"


def load_model_config(cfg: Config):
    """The Hugging Face config of cfg.model.name with this task's labels; reads only config.json."""
    from transformers import AutoConfig

    name = cfg.model.name
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise LoralabError(f"model folder {name} has no config.json")
    if missing_here(name):
        raise LoralabError(f"model folder {name} does not exist: check model.name (a local folder, or a hub id)")
    bundled = HUB_CONFIGS / name
    if not Path(name).exists() and (bundled / "config.json").is_file():
        name = str(bundled)  # the hub model's own config.json, shipped: budgets need no network
    from ..data import label_names_of
    from ..tasks import SHAPES

    labels = label_names_of(cfg.data)
    try:
        return AutoConfig.from_pretrained(
            name,
            problem_type=SHAPES[cfg.data.task].problem_type,  # so a merged export loads with the right loss
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    except (OSError, ValueError) as err:
        where = "" if Path(name).exists() else " (no local folder of that name either: check model.name)"
        raise LoralabError(f"cannot read the model config of '{name}'{where}: {str(err).splitlines()[0]}") from err


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
            linear and module.bias is not None,
            sum(p.numel() for p in module.parameters()),
        )
    return shapes


@dataclass
class Breakdown:
    """Trainable parameters by adapted module kind and head, against the budget."""

    rows: list[tuple[str, int]]
    total: int
    budget: int | None  # None: full fine-tuning, no budget applies

    @property
    def headroom(self) -> int | None:
        return None if self.budget is None else self.budget - self.total

    @property
    def over_budget(self) -> bool:
        return self.budget is not None and self.total > self.budget

    def as_dict(self) -> dict:
        return {"rows": dict(self.rows), "total": self.total, "budget": self.budget, "headroom": self.headroom}

    def format(self) -> str:
        width = max(len(label) for label, _ in self.rows + [("headroom", 0)])
        title = "no budget: full fine-tuning" if self.budget is None else f"budget {self.budget:,}"
        lines = [f"trainable parameters ({title})"]
        lines += [f"  {label:<{width}}  {count:>11,}" for label, count in self.rows]
        lines.append(f"  {'total':<{width}}  {self.total:>11,}")
        if self.budget is not None:
            lines.append(f"  {'headroom':<{width}}  {self.headroom:>11,}")
        return "\n".join(lines)


def lora_params(shape: ModuleShape, rank: int, cfg: Config) -> int:
    """A (r x in) and B (out x r); DoRA adds a magnitude per output; lora_only bias trains the layer's bias."""
    params = rank * (shape.in_features + shape.out_features)
    if cfg.lora.use_dora:
        params += shape.out_features
    if cfg.lora.bias == "lora_only" and shape.has_bias:
        params += shape.out_features
    return params


def count(plan: AdapterPlan, model: ModelShapes, cfg: Config) -> Breakdown:
    shapes = model.modules
    by_kind: dict[str, list[str]] = {}
    for name, kind in plan.lora_kind.items():
        by_kind.setdefault(kind, []).append(name)
    rows = []
    for kind, names in by_kind.items():
        if kind == "head":
            continue
        ranks = sorted({plan.lora_ranks[n] for n in names})
        rank_text = "r" + "/".join(str(r) for r in ranks)
        params = sum(lora_params(shapes[n], plan.lora_ranks[n], cfg) for n in names)
        rows.append((f"lora {kind} ({len(names)} x {rank_text})", params))
    head_lora = by_kind.get("head", [])
    head = sum(shapes[name].params for name in plan.trained_whole)
    head += sum(lora_params(shapes[n], plan.lora_ranks[n], cfg) for n in head_lora)
    parts = plan.trained_whole + [f"lora {n}" for n in head_lora]
    rows.append((f"head ({cfg.model.head}: {' + '.join(parts)})", head))
    return Breakdown(rows, sum(n for _, n in rows), cfg.lora.budget)


def breakdown_for(cfg: Config, model: ModelShapes | None = None) -> tuple[Breakdown, AdapterPlan]:
    model = model or shapes_for(cfg)
    if cfg.model.finetune == "full":
        every = model.modules[""].params  # the root module: every weight of encoder and head
        return Breakdown([("every weight (full fine-tuning)", every)], every, None), AdapterPlan()
    plan = plan_adapters(cfg, model.model_type, list(model.modules))
    return count(plan, model, cfg), plan


def with_rank(cfg: Config, rank: int) -> Config:
    return replace(cfg, lora=replace(cfg.lora, r=rank))


def largest_fitting_rank(cfg: Config, model: ModelShapes) -> int:
    """The largest uniform lora.r within the budget (the count is linear in r: a + b*r)."""
    fixed = breakdown_for(with_rank(cfg, 0), model)[0].total
    per_rank = breakdown_for(with_rank(cfg, 1), model)[0].total - fixed
    if per_rank == 0:
        return 0
    return max(0, (cfg.lora.budget - fixed) // per_rank)


def plan_table(cfg: Config, model: ModelShapes, layers: list[int] | None = None) -> list[dict]:
    """For every scope combination and head mode: the largest uniform rank within the budget and its count."""
    from itertools import combinations

    from ..config import HEAD_MODES, SCOPE_WORDS

    rows = []
    for size in range(1, len(SCOPE_WORDS) + 1):
        for scope in combinations(SCOPE_WORDS, size):
            for head in HEAD_MODES:
                probe = replace(
                    cfg,
                    model=replace(cfg.model, head=head),
                    lora=replace(cfg.lora, scope=list(scope), layers=layers, rank_pattern={}),
                )
                try:
                    rank = largest_fitting_rank(probe, model)
                except LoralabError:  # a head mode this family cannot take
                    continue
                breakdown = breakdown_for(with_rank(probe, max(rank, 1)), model)[0]
                head_params = breakdown.rows[-1][1]
                rows.append(
                    {
                        "scope": ",".join(scope),
                        "head": head,
                        "r": rank,
                        "lora": breakdown.total - head_params,
                        "head_params": head_params,
                        "total": breakdown.total if rank else None,
                        "headroom": breakdown.headroom if rank else None,
                    }
                )
    return rows


def format_plan(rows: list[dict], budget: int) -> str:
    lines = [
        f"largest uniform rank within {budget:,} trainable parameters, per scope and head mode",
        f"{'scope':<52} {'head':<8} {'r':>5} {'lora':>11} {'head':>11} {'total':>11} {'headroom':>9}",
    ]
    for row in rows:
        if row["r"] == 0:
            why = (
                f"{'-':>5}  does not fit: the head alone takes {row['head_params']:,}"
                if row["head_params"] > budget
                else f"{'0':>5}  rank 1 does not fit"
            )
            lines.append(f"{row['scope']:<52} {row['head']:<8} {why}")
            continue
        lines.append(
            f"{row['scope']:<52} {row['head']:<8} {row['r']:>5} {row['lora']:>11,} {row['head_params']:>11,} "
            f"{row['total']:>11,} {row['headroom']:>9,}"
        )
    return "\n".join(lines)


def check_budget(cfg: Config, breakdown: Breakdown, model: ModelShapes) -> None:
    if breakdown.over_budget:
        rank = largest_fitting_rank(cfg, model)
        hint = f"the largest lora.r that fits is {rank}" if rank >= 1 else "no rank fits: shrink the scope or the head"
        raise LoralabError(
            f"over budget: {breakdown.total:,} trainable parameters > lora.budget {cfg.lora.budget:,} ({hint})"
        )
