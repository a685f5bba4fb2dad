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

The Optuna storage (SQLite by default, PostgreSQL for many machines) holds trial state; each
trial's results live in its run directory, which the index (`loralab runs`) reads.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as config_io
from .budget import ModelShapes, breakdown_for, largest_fitting_rank, load_model_config
from .config import Config
from .errors import LoralabError
from .results import ORIGIN
from .store import RunDir, safe_dirname, write_json_atomic

ALPHA_EXPRESSION = re.compile(r"^r\s*\*\s*(\d+(?:\.\d*)?|\.\d+)$")
SWEEP_KEYS = {"base", "name", "overrides", "seeds", "groups", "space"}
GROUP_KEYS = {"grid", "zip", "variants", "set", "seeds"}


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
    overrides: list[str]
    trials: list[Trial] = field(default_factory=list)
    space: dict[str, dict] = field(default_factory=dict)


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


def read_sweep(path: str | Path, runs_dir: str = "runs") -> Sweep:
    """Parse and check a sweep (or search) file; every trial's config is validated here, before any run."""
    path = Path(path)
    spec = config_io.read_yaml(path)
    unknown = set(spec) - SWEEP_KEYS
    if unknown:
        raise LoralabError(f"{path}: unknown key '{sorted(unknown)[0]}' (use {', '.join(sorted(SWEEP_KEYS))})")
    if "base" not in spec:
        raise LoralabError(f"{path}: no 'base' config")
    base = (path.parent / spec["base"]).resolve()
    overrides = [str(o) for o in spec.get("overrides") or []]
    sweep = Sweep(path, str(spec.get("name") or path.stem), base, overrides)
    base_cfg = config_io.load(base, overrides)
    if "groups" in spec:
        if not isinstance(spec["groups"], dict) or not spec["groups"]:
            raise LoralabError(f"{path}: 'groups' must map group names to axes")
        for group, group_spec in spec["groups"].items():
            for label, values, axes in expand_group(str(group), group_spec, spec.get("seeds")):
                where = f"{path}: trial {group}/{label}"
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
        trial_config(sweep, trial, runs_dir)  # type errors and bad values surface now, naming the trial
    return sweep


def trial_config(sweep: Sweep, trial: Trial, runs_dir: str) -> Config:
    values = trial.values | {
        "output.dir": str(Path(runs_dir) / safe_dirname(sweep.name) / safe_dirname(trial.group)),
        "output.name": trial.label,
    }
    try:
        return config_io.load(sweep.base, sweep.overrides, values)
    except LoralabError as err:
        raise LoralabError(f"{sweep.path}: trial {trial.key}: {err}") from None


def check_budgets(sweep: Sweep, runs_dir: str) -> tuple[list[Trial], list[tuple[Trial, str]]]:
    """Split trials into those within the budget and those refused, with the reason."""
    models: dict[str, ModelShapes] = {}
    feasible, rejected = [], []
    for trial in sweep.trials:
        cfg = trial_config(sweep, trial, runs_dir)
        if cfg.model.name not in models:
            models[cfg.model.name] = ModelShapes.of(load_model_config(cfg))
        try:
            breakdown, _ = breakdown_for(cfg, models[cfg.model.name])
        except LoralabError as err:
            rejected.append((trial, str(err)))
            continue
        if breakdown.total > cfg.lora.budget:
            rejected.append((trial, f"{breakdown.total:,} trainable > budget {cfg.lora.budget:,}"))
        else:
            feasible.append(trial)
    return feasible, rejected


# --- Optuna -----------------------------------------------------------------------------------


def default_storage(sweep: Sweep, runs_dir: str) -> str:
    folder = Path(runs_dir) / safe_dirname(sweep.name)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'optuna.db').resolve()}"


def open_study(sweep: Sweep, storage_url: str, heartbeat_s: int):
    """The sweep's Optuna study; heartbeats let a later run find trials whose worker died."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        sqlite = storage_url.startswith("sqlite")
        storage = optuna.storages.RDBStorage(
            storage_url,
            engine_kwargs={"connect_args": {"timeout": 120}} if sqlite else None,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
        )
        if sqlite:
            serialize_sqlite_transactions(storage.engine)
        return optuna.create_study(study_name=sweep.name, storage=storage, direction="maximize", load_if_exists=True)
    except Exception as err:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        raise LoralabError(f"cannot open the Optuna storage {storage_url}: {str(err).splitlines()[0]}") from err


def serialize_sqlite_transactions(engine) -> None:
    """Make every SQLite transaction take the write lock up front (BEGIN IMMEDIATE).

    SQLite ignores SELECT ... FOR UPDATE, so without this two workers can both pop the same queued
    trial; PostgreSQL needs nothing.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners would miss them


def trial_states(study) -> dict[str, list]:
    """Frozen Optuna trials of each sweep trial key."""
    by_key: dict[str, list] = {}
    for frozen in study.get_trials(deepcopy=False):
        key = frozen.user_attrs.get("key")
        if key:
            by_key.setdefault(key, []).append(frozen)
    return by_key


def enqueue_missing(study, trials: list[Trial]) -> int:
    """Queue each trial that has no finished, running or queued Optuna trial; returns how many."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    fail_stale_trials(study)
    fail_dead_local_trials(study)
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    states = trial_states(study)
    queued = 0
    for trial in trials:
        if not any(t.state in live for t in states.get(trial.key, [])):
            study.enqueue_trial({}, user_attrs={"key": trial.key})
            queued += 1
    return queued


def fail_dead_local_trials(study) -> None:
    """Fail running trials whose worker was a process of this machine that no longer exists.

    Heartbeats find dead workers anywhere, but only after their grace period; a sweep restarted
    right after Ctrl-C or a crash would otherwise skip the trial it had just lost.
    """
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def run_trial(sweep: Sweep, trial: Trial, runs_dir: str, on_eval=None) -> dict:
    """Train one trial in its run directory, resuming from its checkpoint if a worker died in it."""
    from .train import train

    cfg = trial_config(sweep, trial, runs_dir)
    run = RunDir(Path(cfg.output.dir) / cfg.output.name)
    if run.summary.exists():  # finished, but the worker died before telling Optuna
        return json.loads(run.summary.read_text())
    run.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.path / ORIGIN, {"group": trial.group, "axes": trial.axes, "sweep": sweep.name, "key": trial.key})
    return train(cfg, resume=True, on_eval=on_eval)  # resume starts afresh where there is no checkpoint


def _is_duplicate(study, trial) -> bool:
    """Another worker already finished this key, or started it first: two never train the same trial."""
    from optuna.trial import TrialState

    key = trial.user_attrs["key"]
    mine = (trial.datetime_start, trial.number)
    for other in trial_states(study).get(key, []):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return True
        if other.state == TrialState.RUNNING and (other.datetime_start, other.number) < mine:
            return True
    return False


def work(sweep: Sweep, storage_url: str, runs_dir: str, heartbeat_s: int) -> None:
    """Take queued trials from the study until none is left."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(sweep, storage_url, heartbeat_s)
    by_key = {t.key: t for t in sweep.trials}

    def objective(trial: optuna.Trial) -> float:
        key = trial.user_attrs.get("key")
        if key is None or key not in by_key:  # a fresh trial: the queue emptied between check and ask
            trial.set_user_attr("spare", True)
            raise optuna.TrialPruned()
        if _is_duplicate(study, trial):
            trial.set_user_attr("duplicate", True)
            raise optuna.TrialPruned()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return run_trial(sweep, by_key[key], runs_dir)["peak_val_accuracy"]

    while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.optimize(objective, n_trials=1, catch=(Exception,))


def sweep_status(study, trials: list[Trial]) -> dict[str, int]:
    from optuna.trial import TrialState

    states = trial_states(study)
    done = sum(1 for t in trials if any(s.state == TrialState.COMPLETE for s in states.get(t.key, [])))
    return {"finished": done, "unfinished": len(trials) - done}


def run_sweep(path: str, storage: str | None, workers: int, runs_dir: str, heartbeat_s: int = 30, log=print) -> dict:
    """Check every trial, queue the missing ones, run them on `workers` processes, report the state."""
    sweep = read_sweep(path, runs_dir)
    feasible, rejected = check_budgets(sweep, runs_dir)
    for trial, reason in rejected:
        log(f"rejected {trial.key}: {reason}")
    storage = storage or default_storage(sweep, runs_dir)
    study = open_study(sweep, storage, heartbeat_s)
    queued = enqueue_missing(study, feasible)
    to_run = sweep_status(study, feasible)["unfinished"]
    log(f"sweep {sweep.name}: {len(feasible)} trials within the budget, {to_run} to run "
        f"({queued} newly queued), {len(rejected)} rejected")  # fmt: skip
    if workers <= 1:
        work(sweep, storage, runs_dir, heartbeat_s)
    else:
        spawn_workers(["sweep", str(path)], storage, workers, runs_dir, heartbeat_s)
    status = sweep_status(study, feasible) | {"rejected": len(rejected)}
    log(f"sweep {sweep.name}: {status['finished']} finished, {status['unfinished']} unfinished, {status['rejected']} rejected")
    return status


def spawn_workers(command: list[str], storage: str, workers: int, runs_dir: str, heartbeat_s: int) -> None:
    """N worker processes on this machine, the CPU threads shared between them."""
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    args = [sys.executable, "-m", "loralab.cli", *command, "--storage", storage, "--runs", runs_dir,
            "--heartbeat", str(heartbeat_s), "--worker"]  # fmt: skip
    processes = [subprocess.Popen(args, env=env) for _ in range(workers)]
    codes = [p.wait() for p in processes]
    if any(codes):
        raise LoralabError(f"{sum(1 for c in codes if c)} of {workers} workers failed (exit codes {codes})")


# --- search -----------------------------------------------------------------------------------


MAX_FIT = "max_fit"  # `lora.r: max_fit`: the largest rank the budget allows for the sampled scope and head


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
            raise LoralabError(f"{sweep.path}: space: {json.dumps(values)} does not fit the budget at any rank; remove it")


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    values = {}
    for key, spec in space.items():
        if spec == MAX_FIT:
            continue
        if "choices" in spec:
            # Optuna's categorical values must be scalars: lists (scopes) travel as JSON text.
            choice = trial.suggest_categorical(key, [json.dumps(c) for c in spec["choices"]])
            values[key] = json.loads(choice)
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return values


def run_search(path: str, n_trials: int, storage: str | None, workers: int, runs_dir: str, heartbeat_s: int = 30,
               worker: bool = False, log=print) -> dict:  # fmt: skip
    """TPE over the declared space; over-budget samples are pruned untrained; evaluations feed pruning."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    sweep = read_sweep(path, runs_dir)
    storage = storage or default_storage(sweep, runs_dir)
    if workers > 1 and not worker:
        open_study(sweep, storage, heartbeat_s)
        spawn_workers(["search", str(path), "--trials", str(n_trials)], storage, workers, runs_dir, heartbeat_s)
    else:
        study = open_study(sweep, storage, heartbeat_s)
        study.sampler = optuna.samplers.TPESampler(seed=None if worker else 0)
        study.pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        base_cfg = config_io.load(sweep.base, sweep.overrides)
        model = ModelShapes.of(load_model_config(base_cfg))

        if sweep.space.get("lora.r") == MAX_FIT:
            check_max_fit_space(sweep, base_cfg, model)

        def objective(trial: optuna.Trial) -> float:
            values = suggest(trial, sweep.space)
            if sweep.space.get("lora.r") == MAX_FIT:
                probe = Trial("search", "probe", resolve_alpha(values, base_cfg.lora.r, str(path)), {})
                values["lora.r"] = largest_fitting_rank(trial_config(sweep, probe, runs_dir), model)
                trial.set_user_attr("lora.r", values["lora.r"])
            values = resolve_alpha(values, values.get("lora.r", base_cfg.lora.r), f"{path}: trial {trial.number}")
            run = Trial("search", f"trial-{trial.number:04d}", values, values)
            trial.set_user_attr("key", run.key)
            breakdown, _ = breakdown_for(trial_config(sweep, run, runs_dir), model)
            trial.set_user_attr("trainable", breakdown.total)
            if breakdown.headroom < 0:
                trial.set_user_attr("rejected", f"{breakdown.total:,} trainable > budget {breakdown.budget:,}")
                raise optuna.TrialPruned()

            def report(step: int, accuracy: float) -> None:
                trial.report(accuracy, step)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            return run_trial(sweep, run, runs_dir, on_eval=report)["peak_val_accuracy"]

        counted = (TrialState.COMPLETE, TrialState.PRUNED)
        study.optimize(objective, callbacks=[MaxTrialsCallback(n_trials, states=counted)], catch=(LoralabError,))
    study = open_study(sweep, storage, heartbeat_s)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(finished, key=lambda t: t.value, default=None)
    status = {"complete": len(finished), "pruned": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))}
    if best is not None and not worker:
        log(f"search {sweep.name}: {status['complete']} complete, {status['pruned']} pruned; best {best.value:.4f} "
            f"({best.user_attrs['key']}: {json.dumps(best.params)})")  # fmt: skip
    return status
