"""Exact trainable-parameter counts from a model's config alone, before any weights are loaded."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from ..config import Config, missing_here
from ..errors import LoralabError
from ..methods import method_of
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


def planning_shapes(cfg: Config) -> ModelShapes:
    """What shapes_for gives, computed from config.json by arithmetic where that knows the model's family and
    config (budget/arithmetic.py: the planner, run again and again, loads neither torch nor transformers); else
    shapes_for itself."""
    from ..data import label_names_of
    from .arithmetic import config_json
    from .arithmetic import module_shapes as by_arithmetic

    name = cfg.model.name
    folder = Path(name) if Path(name).is_dir() else HUB_CONFIGS / name
    config = config_json(folder) if not missing_here(name) else None
    labels = label_names_of(cfg.data)
    modules = by_arithmetic(config, len(labels)) if config is not None else None
    if modules is None:
        return shapes_for(cfg)
    return ModelShapes(SimpleNamespace(**config | {"num_labels": len(labels)}), modules)


def module_shapes(model_config) -> dict[str, ModuleShape]:
    """Every module's shape, from a model built on the meta device (no memory, no weights)."""
    import torch
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


def count(plan: AdapterPlan, model: ModelShapes, cfg: Config) -> Breakdown:
    """Each adapted module's parameters as its method counts them, by scope word, and the head's."""
    method = method_of(cfg)
    shapes = model.modules
    if problem := method.plan_problem(plan, shapes, cfg):
        raise LoralabError(problem)

    def params(name: str) -> int:
        return method.layer_params(shapes[name], plan.lora_ranks[name], cfg, plan.lora_kind[name])

    by_kind: dict[str, list[str]] = {}
    for name, kind in plan.lora_kind.items():
        by_kind.setdefault(kind, []).append(name)
    rows = []
    for kind, names in by_kind.items():
        if kind == "head":
            continue
        sizes = sorted({plan.lora_ranks[n] if method.size_field == "r" else method.size(cfg) for n in names})
        rows.append((f"{method.name} {kind} ({len(names)} x {method.size_label(sizes)})", sum(map(params, names))))
    head_lora = by_kind.get("head", [])
    head = sum(shapes[name].params for name in plan.trained_whole)
    head += sum(map(params, head_lora))
    parts = plan.trained_whole + [f"{method.name} {n}" for n in head_lora]
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
    """cfg with its method's size (lora.r, or lora.n_frequency for FourierFT) set to `rank`."""
    field = method_of(cfg).size_field or "r"
    return replace(cfg, lora=replace(cfg.lora, **{field: rank}))


def largest_fitting_rank(cfg: Config, model: ModelShapes) -> int:
    """The largest uniform size of cfg's method (lora.r, lora.n_frequency) within the budget (every method's
    count is linear in its size: a + b*size); 0 where none fits, or where the method has no size (IA3)."""
    empty, plan = breakdown_for(with_rank(cfg, 0), model)
    fixed = empty.total
    per_rank = breakdown_for(with_rank(cfg, 1), model)[0].total - fixed
    if per_rank == 0:
        return 0
    fits = max(0, (cfg.lora.budget - fixed) // per_rank)
    limit = method_of(cfg).size_limit(plan, model.modules)  # FourierFT: no more than a layer's in x out
    return fits if limit is None else min(fits, limit)


def plan_row(probe: Config, model: ModelShapes) -> dict | None:
    """The largest size of probe's method within its budget, and what it trains (None: a head mode this family
    cannot take). `size` is 0 where none fits; a method without a size (IA3) fits or not as it is."""
    method = method_of(probe)
    try:
        size = largest_fitting_rank(probe, model) if method.size_field else 0
        breakdown = breakdown_for(with_rank(probe, max(size, 1)) if method.size_field else probe, model)[0]
    except LoralabError:
        return None
    fits = size >= 1 if method.size_field else not breakdown.over_budget
    head_params = breakdown.rows[-1][1]
    return {
        "method": method.name,
        "size_field": method.size_field,
        "scope": ",".join(probe.lora.scope),
        "head": probe.model.head,
        "r": size,
        "fits": fits,
        "lora": breakdown.total - head_params,
        "head_params": head_params,
        "total": breakdown.total if fits else None,
        "headroom": breakdown.headroom if fits else None,
    }


def plan_table(cfg: Config, model: ModelShapes, layers: list[int] | None = None) -> list[dict]:
    """For every scope combination and head mode: the largest uniform size of cfg's method within the budget."""
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
                if (row := plan_row(probe, model)) is not None:
                    rows.append(row)
    return rows


def methods_table(cfg: Config, model: ModelShapes) -> list[dict]:
    """For every method and head mode, at cfg's scope and layers: the largest size within the budget."""
    from ..config import HEAD_MODES
    from ..methods import METHODS

    rows = []
    for name, method in METHODS.items():
        # Another method's own settings (LoRA's variants, ...) do not apply: theirs at their defaults.
        others = {key: value for other in METHODS.values() if other is not method
                  for key, value in other.option_defaults().items()}  # fmt: skip
        for head in HEAD_MODES:
            lora = replace(cfg.lora, **(others | {"method": name, "rank_pattern": {}}))
            probe = replace(cfg, model=replace(cfg.model, head=head), lora=lora)
            if (row := plan_row(probe, model)) is not None:
                rows.append(row)
    return rows


def format_plan(rows: list[dict], budget: int, title: str | None = None) -> str:
    lines = [
        title or f"largest uniform size within {budget:,} trainable parameters, per scope and head mode",
        f"{'method':<10} {'scope':<52} {'head':<8} {'size':>17} {'adapters':>11} {'head':>11} {'total':>11} "
        f"{'headroom':>9}",
    ]
    for row in rows:
        where = f"{row['method']:<10} {row['scope']:<52} {row['head']:<8}"
        if not row["fits"]:
            why = (
                f"does not fit: the head alone takes {row['head_params']:,}"
                if row["head_params"] > budget
                else f"does not fit: {row['lora']:,} + {row['head_params']:,} at the smallest size"
            )
            lines.append(f"{where} {'-':>17}  {why}")
            continue
        size = f"{row['size_field']}={row['r']}" if row["size_field"] else "fixed"
        lines.append(
            f"{where} {size:>17} {row['lora']:>11,} {row['head_params']:>11,} {row['total']:>11,} {row['headroom']:>9,}"
        )
    return "\n".join(lines)


def check_budget(cfg: Config, breakdown: Breakdown, model: ModelShapes) -> None:
    if breakdown.over_budget:
        rank, field = largest_fitting_rank(cfg, model), method_of(cfg).size_field
        hint = (
            f"the largest lora.{field} that fits is {rank}"
            if field and rank >= 1
            else f"no {field or 'setting of ' + cfg.lora.method} fits: shrink the scope or the head"
        )
        raise LoralabError(
            f"over budget: {breakdown.total:,} trainable parameters > lora.budget {cfg.lora.budget:,} ({hint})"
        )
