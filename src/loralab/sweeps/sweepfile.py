"""Sweeps and searches on Optuna: declarative axes over a base config, one run directory per trial.

A sweep file:

    base: ../seed.yaml            # relative to this file
    name: seed-study              # Optuna study name; runs go to <runs>/<name>/<group>/<label>
    overrides: [model.name=...]   # applied to every trial
    seeds: [42, 43]               # optional: every trial once per seed (an axis: train.seed)
    groups:
      dropout:
        grid: {lora.dropout: [0.05, 0.1, 0.15]}      # cartesian product of the lists
      modules:
        zip: {lora.scope: [[query], [query, value]], lora.r: [22, 11]}   # lists taken side by side
        set: {lora.alpha: r*2}                        # fixed for the group; alpha may be r*<number>
      additional:
        variants: {long: {train.lr: 3e-5, train.steps: 2400}}         # named override sets

A search file has `space:` instead of `groups:` (see `SearchSpace`).

This module reads and checks the file; it knows nothing of Optuna (sweep.py runs the trials).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config as config_io
from ..budget.count import ModelShapes, breakdown_for, largest_fitting_rank, shapes_for
from ..config import Config
from ..errors import LoralabError
from ..methods import method_of
from ..runs.rundir import safe_dirname

ALPHA_EXPRESSION = re.compile(r"^r\s*\*\s*(\d+(?:\.\d*)?|\.\d+)$")

SWEEP_KEYS = {"base", "name", "overrides", "seeds", "groups", "space"}

GROUP_KEYS = {"grid", "zip", "variants", "set", "seeds"}

MAX_FIT = "max_fit"  # `lora.r: max_fit`: the largest size of the method (r; FourierFT: n_frequency) that fits


@dataclass
class Trial:
    group: str
    label: str
    values: dict[str, Any]  # section.key -> value, alpha already resolved
    axes: dict[str, Any]  # the values this trial was swept on

    @property
    def key(self) -> str:
        return f"{self.group}/{self.label}"


@dataclass
class Sweep:
    path: Path
    name: str
    base: Path
    overrides: list[str]  # the file's, then the command line's
    trials: list[Trial] = field(default_factory=list)
    command_overrides: list[str] = field(default_factory=list)  # the command line's alone (the study records them)
    space: dict[str, dict] = field(default_factory=dict)

    def folder(self, runs_dir: str) -> Path:
        """Where the sweep lives under a folder of runs: its trials' groups, and its Optuna database by default."""
        return Path(runs_dir) / safe_dirname(self.name)


def resolve_alpha(values: dict[str, Any], base_r: int, where: str) -> dict[str, Any]:
    """Turn `lora.alpha: r*2` into a number using the trial's own rank."""
    alpha = values.get("lora.alpha")
    if not isinstance(alpha, str):
        return values
    match = ALPHA_EXPRESSION.match(alpha.strip())
    if not match:
        try:
            return values | {"lora.alpha": float(alpha)}
        except ValueError:
            raise LoralabError(f"{where}: lora.alpha '{alpha}' is not a number or r*<number>") from None
    rank = values.get("lora.r", base_r)
    return values | {"lora.alpha": float(match.group(1)) * rank}


def _check_axis(key: str, where: str) -> None:
    if not config_io.is_key(key):
        raise LoralabError(f"{where}: unknown axis '{key}' (axes are config keys such as lora.r or train.lr)")


def _short(key: str, value: Any) -> str:
    name = key.split(".")[-1]
    if isinstance(value, list):
        return f"{name}={'+'.join(map(str, value))}"
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def expand_group(group: str, spec: dict, seeds: list[int] | None) -> list[tuple[str, dict, dict]]:
    """(label, values, axes) of every trial a group declares."""
    where = f"group '{group}'"
    if not isinstance(spec, dict) or not spec:
        raise LoralabError(f"{where}: expected a mapping with grid, zip, variants or set")
    unknown = set(spec) - GROUP_KEYS
    if unknown:
        raise LoralabError(f"{where}: unknown entry '{sorted(unknown)[0]}' (use {', '.join(sorted(GROUP_KEYS))})")
    parts: list[list[tuple[str, dict]]] = []  # each part: alternatives of (label, values)

    grid = spec.get("grid") or {}
    for key, options in grid.items():
        _check_axis(key, where)
        if not isinstance(options, list) or not options:
            raise LoralabError(f"{where}: axis '{key}' must be a non-empty list")
        parts.append([(_short(key, v), {key: v}) for v in options])
    zipped = spec.get("zip") or {}
    if zipped:
        lengths = set()
        for key, options in zipped.items():
            _check_axis(key, where)
            if not isinstance(options, list) or not options:
                raise LoralabError(f"{where}: axis '{key}' must be a non-empty list")
            lengths.add(len(options))
        if len(lengths) > 1:
            raise LoralabError(f"{where}: zip lists have different lengths ({', '.join(map(str, sorted(lengths)))})")
        rows = zip(*zipped.values())
        parts.append([("_".join(_short(k, v) for k, v in zip(zipped, row)), dict(zip(zipped, row))) for row in rows])
    variants = spec.get("variants") or {}
    if variants:
        for name, values in variants.items():
            if not isinstance(values, dict) or not values:
                raise LoralabError(f"{where}: variant '{name}' must be a non-empty mapping of overrides")
            for key in values:
                _check_axis(key, f"{where}, variant '{name}'")
        parts.append([(str(name), dict(values)) for name, values in variants.items()])
    group_seeds = spec.get("seeds", seeds)
    if group_seeds:
        parts.append([(f"seed={s}", {"train.seed": s}) for s in group_seeds])
    fixed = spec.get("set") or {}
    for key in fixed:
        _check_axis(key, f"{where}, set")
    if not parts:
        parts.append([("base", {})])

    trials = []
    for combination in itertools.product(*parts):
        label = "_".join(label for label, _ in combination)
        axes = {k: v for _, values in combination for k, v in values.items()}
        trials.append((label, fixed | axes, axes))
    return trials


def read_sweep(path: str | Path, runs_dir: str = "runs", command_overrides: list[str] = ()) -> Sweep:
    """Parse and check a sweep (or search) file; every trial's config is validated here, before any run.
    `command_overrides` (section.key=value from the command line) apply to every trial, after the file's."""
    path = Path(path)
    spec = config_io.read_yaml(path)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise LoralabError(f"{path}: unknown key '{sorted(unknown)[0]}' (use {', '.join(sorted(SWEEP_KEYS))})")
    if "base" not in spec:
        raise LoralabError(f"{path}: no 'base' config")
    base = (path.parent / spec["base"]).resolve()
    overrides = [str(o) for o in spec.get("overrides") or []] + list(command_overrides)
    sweep = Sweep(path, str(spec.get("name") or path.stem), base, overrides, command_overrides=list(command_overrides))
    base_cfg = config_io.load(base, overrides)
    if "groups" in spec:
        if not isinstance(spec["groups"], dict) or not spec["groups"]:
            raise LoralabError(f"{path}: 'groups' must map group names to axes")
        for group, group_spec in spec["groups"].items():
            for label, values, axes in expand_group(str(group), group_spec, spec.get("seeds")):
                where = f"{path}: trial {group}/{label}"
                if values.get("lora.r") != MAX_FIT:  # a max_fit rank, and its alpha, resolve when the trial runs
                    values = resolve_alpha(values, values.get("lora.r", base_cfg.lora.r), where)
                axes = {k: values[k] for k in axes}
                sweep.trials.append(Trial(str(group), safe_dirname(label), values, axes))
        keys = [t.key for t in sweep.trials]
        duplicates = {k for k in keys if keys.count(k) > 1}
        if duplicates:
            raise LoralabError(f"{path}: two trials share the label {sorted(duplicates)[0]}")
    elif "space" in spec:
        sweep.space = parse_space(spec["space"], path)
    else:
        raise LoralabError(f"{path}: needs 'groups' (a sweep) or 'space' (a search)")
    for trial in sweep.trials:
        # Type errors and bad values surface now, naming the trial (a max_fit rank is probed at 1: no model read).
        trial_config(sweep, trial, runs_dir, resolve=False)
    return sweep


def trial_config(sweep: Sweep, trial: Trial, runs_dir: str, resolve: bool = True) -> Config:
    """The trial's config; `lora.r: max_fit` becomes the largest rank its budget allows (reads config.json)."""
    values = trial.values | {
        "output.dir": str(sweep.folder(runs_dir) / safe_dirname(trial.group)),
        "output.name": trial.label,
    }
    where = f"{sweep.path}: trial {trial.key}"
    try:
        if values.get("lora.r") == MAX_FIT:
            probe = config_io.load(sweep.base, sweep.overrides, resolve_alpha(values | {"lora.r": 1}, 1, where))
            field = method_of(probe).size_field  # what max_fit sizes: lora.r, or FourierFT's lora.n_frequency
            if field is None:
                raise LoralabError(f"lora.r: max_fit: {probe.lora.method} has no size to fit (give lora.r a number)")
            rank = largest_fitting_rank(probe, shapes_for(probe)) if resolve else 1
            if rank < 1:
                raise LoralabError(f"no lora.{field} fits lora.budget {probe.lora.budget:,} with this scope and head")
            sized = {"lora.r": rank} if field == "r" else {"lora.r": probe.lora.r, f"lora.{field}": rank}
            values = resolve_alpha(values | sized, sized["lora.r"], where)
        return config_io.load(sweep.base, sweep.overrides, values)
    except LoralabError as err:
        raise LoralabError(f"{where}: {err}") from None


def check_budgets(sweep: Sweep, runs_dir: str) -> tuple[list[Trial], list[tuple[Trial, str]]]:
    """Split trials into those within the budget and those refused, with the reason."""
    feasible, rejected = [], []
    for trial in sweep.trials:
        try:
            cfg = trial_config(sweep, trial, runs_dir)
            breakdown, _ = breakdown_for(cfg, shapes_for(cfg))
        except LoralabError as err:
            rejected.append((trial, str(err)))
            continue
        if breakdown.over_budget:
            rejected.append((trial, f"{breakdown.total:,} trainable > budget {cfg.lora.budget:,}"))
        else:
            feasible.append(trial)
    return feasible, rejected


def parse_space(space: Any, path: Path) -> dict[str, dict]:
    """`key: {low, high[, log]}` (int if both bounds are), `key: {choices: [...]}`, or `lora.r: max_fit`."""
    if not isinstance(space, dict) or not space:
        raise LoralabError(f"{path}: 'space' must map config keys to ranges or choices")
    for key, spec in space.items():
        _check_axis(key, f"{path}: space")
        if spec == MAX_FIT:
            if key != "lora.r":
                raise LoralabError(f"{path}: space '{key}': max_fit applies to lora.r only")
            continue
        if not isinstance(spec, dict) or not ({"low", "high"} <= set(spec) or "choices" in spec):
            raise LoralabError(f"{path}: space '{key}' needs low and high, or choices")
        if "choices" in spec and (not isinstance(spec["choices"], list) or not spec["choices"]):
            raise LoralabError(f"{path}: space '{key}': choices must be a non-empty list")
    return space


def check_max_fit_space(sweep: Sweep, base_cfg: Config, model: ModelShapes) -> None:
    """With `lora.r: max_fit`, every sampled scope/head/layers combination must fit at rank 1 or more,
    so the search never proposes an infeasible trial."""
    structural = [k for k in ("lora.scope", "model.head", "lora.layers") if "choices" in sweep.space.get(k, {})]
    for combination in itertools.product(*(sweep.space[k]["choices"] for k in structural)):
        values = dict(zip(structural, combination))
        probe = Trial("search", "probe", resolve_alpha(values, base_cfg.lora.r, str(sweep.path)), {})
        if largest_fitting_rank(trial_config(sweep, probe, "runs"), model) < 1:
            raise LoralabError(
                f"{sweep.path}: space: {json.dumps(values)} does not fit the budget at any rank; remove it"
            )
